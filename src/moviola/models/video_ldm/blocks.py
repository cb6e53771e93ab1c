"""Video LDM's temporal layers as the U-Net's hook places them (nn/unet.py, ``temporal=``).

After each resnet of the image U-Net a 3-D convolution residual block, after each spatial transformer a
temporal attention (optionally attending to the text); each output is mixed into the spatial path by
``α·z + (1 − α)·z'`` (nn/temporal.AlphaBlend), with α = 1 for the image frames of a joint batch. Given
frames (prediction, interpolation) reach the temporal layers as the paper feeds them: ``(m ∘ z, m)``
through a learned downsampling (``ContextPyramid``), one feature map per U-Net level, added to the
temporal branch's input by a zero-initialized projection, so the frozen spatial layers never see them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.models.unet_video import VideoState
from moviola.nn.temporal import AlphaBlend, TemporalConvBlock, TemporalSelfAttention


class ContextPyramid(nn.Module):
    """(m ∘ z, m) frames (N, C+1, H, W) -> one feature map per U-Net level (the paper's learned downsampling):
    a 3×3 convolution, then a stride-2 one per level below, as the U-Net downsamples."""

    def __init__(self, in_channels: int, channels: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels, channels[1:]))

    def forward(self, c: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(c)]
        for conv in self.down:
            feats.append(conv(torch.nn.functional.silu(feats[-1])))
        return feats


class _WithContext(nn.Module):
    """A temporal branch whose input also gets its level's context features (zero-initialized projection)."""

    def __init__(self, branch: nn.Module, level: int, level_channels: int, channels: int):
        super().__init__()
        self.branch, self.level = branch, level
        self.context_proj = nn.Conv2d(level_channels, channels, 1)
        nn.init.zeros_(self.context_proj.weight)
        nn.init.zeros_(self.context_proj.bias)

    def forward(self, h: torch.Tensor, frames: int, num_images: int = 0, context_features=None, **kw) -> torch.Tensor:
        if context_features is not None:
            h = h + self.context_proj(context_features[self.level])
        return self.branch(h, frames, num_images=num_images, **kw)


class TemporalMixer(nn.Module):
    """One temporal layer of the U-Net: ``h -> h + (1 − α)·branch(h)`` on the video frames (α = 1 on images)."""

    def __init__(self, kind: str, channels: int, groups: int, *, level: int, level_channels: Optional[int],
                 alpha_init: float, learned: bool, window: Optional[int], text_channels: Optional[int],
                 head_channels: int, kernel: int):
        super().__init__()
        self.kind = kind
        if kind == "resnet":
            branch = TemporalConvBlock(channels, groups, temporal_kernel=kernel)
        else:
            branch = TemporalSelfAttention(channels, groups, head_dim=head_channels, window=window,
                                           context_dim=text_channels)
        self.text = kind == "attention" and text_channels is not None
        if level_channels is not None:
            branch = _WithContext(branch, level, level_channels, channels)
        self.mix = AlphaBlend(branch, alpha_init=alpha_init, learned=learned)

    def forward(self, h: torch.Tensor, video: VideoState) -> torch.Tensor:
        if video.num_images >= video.frames:  # every frame an image: the image model
            return h
        kw = {}
        if isinstance(self.mix.branch, _WithContext):
            kw["context_features"] = video.context
        if self.text:
            kw.update(context=video.text, context_mask=video.text_mask)
        return self.mix(h, video.frames, num_images=video.num_images, **kw)
