"""Tokens from latents and back: per-frame p×p patches, s×p×p tubelets, and un-patchify."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Per-frame non-overlapping p×p patches -> tokens (a strided Conv2d, ``x_embedder.proj``)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)
        tok = self.proj(frames)  # (B·T, D, h, w)
        D, h, w = tok.shape[1:]
        return tok.flatten(2).transpose(1, 2).reshape(B, T, h * w, D)  # (B, T, N, D)


class TubeletEmbed(nn.Module):
    """s×p×p tubelets -> tokens (ViViT's tubelet / Latte's "compression frame" embedding, a strided Conv3d)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, tubelet_size: int):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.proj(x)  # (B, D, T/s, h, w)
        return tok.flatten(3).permute(0, 2, 3, 1)  # (B, T/s, N, D)


def unpatchify(out: torch.Tensor, h: int, w: int, patch_size: int, tubelet_size: int, channels: int) -> torch.Tensor:
    """Tokens of s·p·p·C values -> a video: (B, T', h·w, s·p·p·C) -> (B, C, T'·s, h·p, w·p)."""
    B, T = out.shape[:2]
    p, s, co = patch_size, tubelet_size, channels
    out = out.reshape(B, T, h, w, s, p, p, co)  # (B, T', h, w, s, p, p, C)
    out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', s, h, p, w, p)
    return out.reshape(B, co, T * s, h * p, w * p)  # (B, C, T, H, W)
