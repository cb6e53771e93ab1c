"""Context frames: frames given as conditions, ``c = (m ∘ z, m)`` (Video LDM, W.A.L.T).

One mechanism serves image-to-video (the first frame given), prediction (a prefix given) and
interpolation (the first and last frames, or keyframes, given). A model with ``context_frames``
takes the clean latent ``z`` of the given frames and the mask ``m`` as extra input channels beside
``x_t``; the mask has shape ``(B, 1, T, 1, 1)`` (whole frames) and is 1 where a frame is given.
"""
from __future__ import annotations

from typing import Optional

import torch

CONTEXT_MODES = ("first", "prefix", "ends")  # the modes "any" chooses among (its draws are pinned: keep this order)
MODES = (*CONTEXT_MODES, "prefix2", "keyframes", "any")  # every mode context_mask takes
KEYFRAME_STRIDE = 4  # Video LDM's interpolation model: T -> 4T, three new frames between two keyframes


def context_mask(mode: str, batch: int, frames: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A training mask ``(B, 1, T, 1, 1)`` in float: which frames each example is given.

    ``first``: frame 0 (image-to-video). ``prefix``: the first k frames, k uniform in 1..max(1, T//2)
    (prediction). ``ends``: the first and the last frame (interpolation). ``any``: one of those three,
    uniformly, per example (never the two below, so runs made before them keep their batches).
    ``prefix2``: the first 1 or 2 frames (fewer when T is 1), uniformly per example: Video LDM's
    prediction model, which with ``context_dropout`` draws 0, 1 or 2 given frames and samples long
    videos by continuing from the last 2. ``keyframes``: every ``KEYFRAME_STRIDE``-th frame, 0, 4, 8, ...
    (the last frame is one when (T − 1) % 4 == 0): Video LDM's interpolation model, which generates
    the three frames between each two keyframes (its mask is the same for every example).

    Every mode makes the same two ``(B,)`` draws from ``generator`` (so the draws after them, the
    trainer's context dropout, do not depend on the mode); ``prefix2`` alone draws a third after them.
    """
    if mode not in MODES:
        raise ValueError(f"context mode must be one of {MODES}, got {mode!r}")
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    # these draws happen whatever the mode, so the RNG stream after them does not depend on it
    which = torch.randint(0, len(CONTEXT_MODES), (batch,), generator=generator)
    prefix = torch.randint(1, max(1, frames // 2) + 1, (batch,), generator=generator)
    pos = torch.arange(frames)
    if mode == "keyframes":
        return (pos % KEYFRAME_STRIDE == 0).float().expand(batch, frames).clone()[:, None, :, None, None]
    if mode == "prefix2":  # one more draw, after the shared ones: the older modes keep their stream
        k = torch.randint(1, 3, (batch,), generator=generator).clamp(max=frames)
        return (pos[None] < k[:, None]).float()[:, None, :, None, None]
    m = torch.zeros(batch, frames)
    for i in range(batch):
        kind = mode if mode != "any" else CONTEXT_MODES[int(which[i])]
        if kind == "first":
            m[i, 0] = 1
        elif kind == "prefix":
            m[i] = (pos < prefix[i]).float()
        else:
            m[i, 0] = m[i, -1] = 1
    return m[:, None, :, None, None]  # (B, 1, T, 1, 1)


def first_frame_mask(batch: int, frames: int) -> torch.Tensor:
    """``(B, 1, T, 1, 1)`` with only frame 0 given (image-to-video)."""
    m = torch.zeros(batch, 1, frames, 1, 1)
    m[:, :, 0] = 1
    return m
