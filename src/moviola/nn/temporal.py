"""Temporal layers for frame-wise networks (Video LDM, Blattmann et al. 2023, §3.1): a 3-D convolution
residual block over (T, H, W), self-attention over the frames at each pixel, and the learned α-blend
that mixes their output into the frame-wise path.

They work on frames ``(B·T, C, H, W)``, as the 2-D network around them does, and reshape to
``(B, C, T, H, W)`` (convolution) or ``(B·H·W, T, C)`` (attention) and back. Each branch returns
its residual with its last layer zero-initialized, so a network that gains these layers starts out
computing exactly what it computed before. Used by the temporal decoder (autoencoders/) today and
by Video LDM's U-Net next.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moviola.nn.attention import Attention
from moviola.nn.embeddings import rope_1d


def _to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    BT, C, H, W = x.shape
    return x.reshape(BT // frames, frames, C, H, W).transpose(1, 2)  # (B, C, T, H, W)


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)


def _standard_layout(x: torch.Tensor) -> torch.Tensor:
    """x, contiguous. The frozen decoder's activations are channels-last (diffusers' posterior mean
    is a channel slice) and need no gradient; GroupNorm's CPU backward on such an input (torch 2.13)
    segfaults when only its weight needs a gradient, which is exactly our first temporal norm."""
    return x.contiguous()


class TemporalConvBlock(nn.Module):
    """Video LDM's 3-D convolution residual block; returns the residual (not x + residual).

    GroupNorm → SiLU → Conv3d → GroupNorm → SiLU → Conv3d (zero-initialized). The norms take
    statistics per frame, as the 2-D decoder's do, so frames interact only through the
    convolutions' temporal kernel. Time is padded by repeating the edge frames: the first and last
    frame see a still video, not black frames, and an image (T = 1) is a still video.
    """

    def __init__(self, channels: int, groups: int, temporal_kernel: int = 3, spatial_kernel: int = 1,
                 eps: float = 1e-6):
        super().__init__()
        for name, k in (("temporal_kernel", temporal_kernel), ("spatial_kernel", spatial_kernel)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {k}")
        kernel = (temporal_kernel, spatial_kernel, spatial_kernel)
        pad = (0, spatial_kernel // 2, spatial_kernel // 2)  # time is padded by hand (replicate)
        self.time_pad = temporal_kernel // 2
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=pad)
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv2 = nn.Conv3d(channels, channels, kernel, padding=pad)
        nn.init.zeros_(self.conv2.weight)  # the block starts as exactly zero: the network is unchanged
        nn.init.zeros_(self.conv2.bias)

    def _conv(self, conv: nn.Conv3d, x: torch.Tensor, frames: int) -> torch.Tensor:
        v = _to_video(x, frames)  # (B, C, T, H, W)
        if self.time_pad:
            p = self.time_pad
            v = F.pad(v, (0, 0, 0, 0, p, p), mode="replicate")  # (B, C, T + 2p, H, W)
        return _to_frames(conv(v))  # (B·T, C, H, W)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = _standard_layout(x)
        h = self._conv(self.conv1, F.silu(self.norm1(x)), frames)
        return self._conv(self.conv2, F.silu(self.norm2(h)), frames)


class TemporalSelfAttention(nn.Module):
    """Self-attention over the T frames at each pixel; returns the residual.

    Positions are rotary (RoPE) on the frame index: the scores depend only on frame offsets, the
    relative sinusoidal encoding Video LDM uses so that clips longer than the training clips work.
    """

    def __init__(self, channels: int, groups: int, head_dim: int = 64, eps: float = 1e-6):
        super().__init__()
        heads = max(1, channels // head_dim)
        if channels % heads or (channels // heads) % 2:
            raise ValueError(f"temporal attention over {channels} channels needs an even head width; "
                             f"{heads} heads of {channels / heads:g} channels does not work (change head_dim)")
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.attn = Attention(channels, heads)
        nn.init.zeros_(self.attn.proj.weight)  # the block starts as exactly zero: the network is unchanged
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        BT, C, H, W = x.shape
        B = BT // frames
        h = self.norm(_standard_layout(x)).reshape(B, frames, C, H * W)  # (B, T, C, H·W)
        h = h.permute(0, 3, 1, 2).reshape(B * H * W, frames, C)  # (B·H·W, T, C)
        cos, sin = rope_1d(frames, self.attn.head_dim)
        out = self.attn(h, rope=(cos.to(x.device), sin.to(x.device)))  # (B·H·W, T, C)
        out = out.reshape(B, H * W, frames, C).permute(0, 2, 3, 1)  # (B, T, C, H·W)
        return out.reshape(BT, C, H, W)  # (B·T, C, H, W)


class AlphaBlend(nn.Module):
    """``α · h + (1 − α) · (h + branch(h))`` with α = sigmoid(mix_logit), one scalar per layer."""

    def __init__(self, branch: nn.Module, alpha_init: float = 0.5):
        super().__init__()
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1) (α = sigmoid(logit)), got {alpha_init}")
        self.branch = branch
        self.mix_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_logit)

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        return h + (1.0 - self.alpha) * self.branch(h, frames)
