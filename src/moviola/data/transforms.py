"""Spatial transforms on ``(C, T, H, W)`` float videos: resize to cover a size, then center crop.

Resizing shorter-side-first and cropping the centre keeps the aspect ratio (no stretching), the
usual recipe for video-diffusion training data (Latte, Video LDM).
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F

SizeLike = Union[int, tuple[int, int]]

__all__ = ["area_downsample", "center_crop", "resize_and_crop", "resize_shorter_side", "to_hw"]


def to_hw(size: SizeLike) -> tuple[int, int]:
    """``32 -> (32, 32)``; ``(H, W)`` passes through; anything else is a ValueError."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 4 or not video.is_floating_point():
        raise ValueError(f"expected a float (C,T,H,W) video, got {video.dtype} of shape {tuple(video.shape)}")


def _resize(video: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(video.shape[-2:]) == hw:
        return video  # exact pass-through: no resampling blur when the size already fits
    # (C, T, H, W) -> (T, C, H, W): interpolate treats T as the batch
    frames = video.transpose(0, 1)
    # antialias so downscaling averages rather than aliases; bilinear never overshoots the range
    out = F.interpolate(frames, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.transpose(0, 1).contiguous()  # (T, C, H', W') -> (C, T, H', W')


def resize_shorter_side(video: torch.Tensor, side: int) -> torch.Tensor:
    """Scale so the shorter spatial side equals ``side``, keeping the aspect ratio."""
    _check_video(video)
    h, w = video.shape[-2:]
    scale = side / min(h, w)
    return _resize(video, (max(side, round(h * scale)), max(side, round(w * scale))))


def center_crop(video: torch.Tensor, size: SizeLike) -> torch.Tensor:
    """Crop the central ``(H, W)`` window; the input must be at least that large."""
    _check_video(video)
    th, tw = to_hw(size)
    h, w = video.shape[-2:]
    if h < th or w < tw:
        raise ValueError(f"cannot center-crop {h}x{w} to {th}x{tw}: the input is smaller")
    y, x = (h - th) // 2, (w - tw) // 2
    return video[..., y : y + th, x : x + tw]


def resize_and_crop(video: torch.Tensor, size: SizeLike) -> torch.Tensor:
    """Resize so the video covers ``size`` (the shorter side for a square), then center crop."""
    _check_video(video)
    th, tw = to_hw(size)
    h, w = video.shape[-2:]
    scale = max(th / h, tw / w)
    # ceil guards against rounding a dimension to one pixel short of the crop
    hw = (max(th, math.ceil(h * scale - 1e-6)), max(tw, math.ceil(w * scale - 1e-6)))
    return center_crop(_resize(video, hw), (th, tw)).clamp(-1.0, 1.0)


def area_downsample(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Each frame of a ``(C, T, H, W)`` or ``(B, C, T, H, W)`` video made ``factor`` times smaller by averaging
    each ``factor × factor`` block: area resampling (``F.interpolate(mode="area")`` at an integer factor), the
    low-resolution clip an upsampler learns to undo (conditions.low_res). Averaging cannot alias or leave [-1, 1]."""
    if video.ndim not in (4, 5) or not video.is_floating_point():
        raise ValueError(f"expected a float (C,T,H,W) or (B,C,T,H,W) video, got {video.dtype} of shape "
                         f"{tuple(video.shape)}")
    h, w = video.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"cannot area-downsample {h}×{w} by {factor}: the factor must divide the frame")
    if factor == 1:
        return video
    return F.avg_pool3d(video, kernel_size=(1, factor, factor))
