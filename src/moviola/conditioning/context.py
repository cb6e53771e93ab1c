"""Context frames: frames given as conditions, ``c = (m ∘ z, m)`` (Video LDM, W.A.L.T).

One mechanism serves image-to-video (the first frame given), prediction (a prefix given) and
interpolation (the first and last frames given). A model with ``context_frames`` takes the clean
latent ``z`` of the given frames and the mask ``m`` as extra input channels beside ``x_t``; the
mask has shape ``(B, 1, T, 1, 1)`` (whole frames) and is 1 where a frame is given.
"""
from __future__ import annotations

from typing import Optional

import torch

CONTEXT_MODES = ("first", "prefix", "ends")


def context_mask(mode: str, batch: int, frames: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A training mask ``(B, 1, T, 1, 1)`` in float: which frames each example is given.

    ``first``: frame 0 (image-to-video). ``prefix``: the first k frames, k uniform in 1..max(1, T//2)
    (prediction). ``ends``: the first and the last frame (interpolation). ``any``: one of the three,
    uniformly, per example.
    """
    if mode not in (*CONTEXT_MODES, "any"):
        raise ValueError(f"context mode must be one of {(*CONTEXT_MODES, 'any')}, got {mode!r}")
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    # every draw happens whatever the mode, so the RNG stream does not depend on it
    which = torch.randint(0, len(CONTEXT_MODES), (batch,), generator=generator)
    prefix = torch.randint(1, max(1, frames // 2) + 1, (batch,), generator=generator)
    pos = torch.arange(frames)
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
