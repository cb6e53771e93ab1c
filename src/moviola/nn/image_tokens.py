"""A small trainable image encoder: images -> tokens, for image-to-video conditioning where no pretrained CLIP is
at hand (Moving Shapes, tests). It is trained with the denoiser; frozen pretrained encoders live in
``moviola.conditioning.image``.

::

    images (B, C, H, W) -> proj (conv, kernel = stride = patch) -> + 2-D sin-cos positions
      -> depth × [x += attn(norm1(x)); x += mlp(norm2(x))]   (pre-norm transformer layers)
      -> norm (LayerNorm) [-> out (Linear to out_dim)]       -> tokens (B, (H/patch)·(W/patch), D)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.conditioning.image import check_images
from moviola.nn.attention import Attention
from moviola.nn.embeddings import sincos_2d
from moviola.nn.mlp import Mlp


class _EncoderLayer(nn.Module):
    """Pre-norm self-attention and MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchImageEncoder(nn.Module):
    """``PatchImageEncoder(channels, dim, patch, depth)``: ``encoder(images (B, channels, H, W)) -> tokens (B,
    (H/patch)·(W/patch), out_dim or dim)``; H and W must be multiples of ``patch``. Positions are fixed 2-D
    sin-cos (any grid size works), so ``dim`` must be divisible by 4 and by ``heads``."""

    def __init__(self, channels: int = 3, dim: int = 64, patch: int = 4, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, out_dim: Optional[int] = None):
        super().__init__()
        for name, value in (("channels", channels), ("dim", dim), ("patch", patch), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        if dim % 4 or dim % heads:
            raise ValueError(f"dim={dim} must be divisible by 4 (2-D sin-cos positions) and by heads={heads}")
        self.channels, self.dim, self.patch = channels, dim, patch
        self.out_dim = dim if out_dim is None else out_dim
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.blocks = nn.ModuleList(_EncoderLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = None if out_dim is None else nn.Linear(dim, out_dim)

    def num_tokens(self, height: int, width: int) -> int:
        return (height // self.patch) * (width // self.patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.channels)
        H, W = images.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"image size {H}×{W} is not a multiple of patch={self.patch}")
        h = self.proj(images.to(self.proj.weight.dtype))  # (B, D, H/p, W/p)
        gh, gw = h.shape[-2:]
        x = h.flatten(2).transpose(1, 2)  # (B, N, D), row-major
        x = x + sincos_2d(gh, gw, self.dim).to(device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x if self.out is None else self.out(x)
