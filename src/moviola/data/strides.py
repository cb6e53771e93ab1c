"""Frame strides per clip, and the frame rate they give (VideoCrafter's ``fps`` condition).

A clip at stride ``s`` is frames ``0, s, 2s, ...`` of its source, so its motion is ``s`` times faster
per frame and its frame rate is ``data.fps / s``: ``data.fps`` is the native rate of the data (a
folder's files; Moving Shapes' is 8, the spec's).

With ``data.frame_strides`` (a list) each item draws its stride from the list, uniformly over the list's
entries (list a stride twice to draw it twice as often), as a pure function of ``(data.seed, key)``: the
same in every epoch, run and DataLoader worker, as the latent cache and exact resume need. The key is
the clip's index for Moving Shapes, the file's path relative to the folder for a folder (as for
``data.clip_start: random``: an index moves when files come and go, a name does not). Without the list
every clip has the one ``data.frame_stride``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

STRIDE_STREAM = 0x5F5  # the stride draw's own random stream: apart from Moving Shapes' positions ([seed, 0|1, i])

__all__ = ["STRIDE_STREAM", "check_strides", "clip_fps", "default_fps", "draw_stride", "strides_of"]


def check_strides(strides: Optional[Sequence[int]], name: str = "strides") -> Optional[tuple[int, ...]]:
    """``strides`` as a tuple of positive ints (None stays None): a ValueError naming ``name`` otherwise."""
    if strides is None:
        return None
    values = tuple(strides)
    if not values:
        raise ValueError(f"{name} is empty: give at least one frame stride, or null for one stride for every clip")
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1]
    if bad:
        raise ValueError(f"{name} must be positive ints (frame strides), got {bad[0]!r}")
    return tuple(int(s) for s in values)


def draw_stride(strides: Sequence[int], seed: int, key: int) -> int:
    """The stride of the item ``key`` (a non-negative int): ``strides[k]``, k uniform, from ``(seed, key)`` alone."""
    if len(strides) == 1:
        return int(strides[0])
    rng = np.random.default_rng([int(seed), STRIDE_STREAM, int(key)])
    return int(strides[int(rng.integers(len(strides)))])


def strides_of(data_cfg) -> tuple[int, ...]:
    """The strides a ``data:`` section trains on: ``data.frame_strides``, or ``(data.frame_stride,)``."""
    strides = getattr(data_cfg, "frame_strides", None)
    return tuple(strides) if strides else (int(getattr(data_cfg, "frame_stride", 1)),)


def clip_fps(data_cfg, stride) -> float:
    """The frame rate of a clip at ``stride``: ``data.fps / stride``."""
    return float(getattr(data_cfg, "fps", 8.0)) / float(stride)


def default_fps(data_cfg) -> float:
    """The frame rate a model conditioned on fps samples at by default: ``data.fps`` over the first of its
    strides (the data's native rate with the usual ``[1, ...]``; put the rate you mean first)."""
    return clip_fps(data_cfg, strides_of(data_cfg)[0])
