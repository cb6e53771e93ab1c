"""Latte: a video diffusion transformer (Ma et al. 2024, "Latte: Latent Diffusion Transformer
for Video Generation").

Variant 1 of the paper: spatial and temporal transformer blocks interleaved. Every block is a
DiT block with adaLN-Zero ("S-AdaLN"): the timestep (and class) embedding regresses a shift,
scale and gate for each residual branch, and the gates start at zero so every block starts as
the identity and the untrained model outputs exactly zero.

Tokens live as a 4-D tensor ``(B, groups, seq, D)`` and a block attends along ``seq``:
spatial blocks see ``(B, T, N, D)`` (attention over the N patches of a frame), temporal blocks
see ``(B, N, T, D)`` (attention over the T frames at one patch). Conditioning is per frame,
``(B, T, D)``, so a timestep per frame (``t`` of shape ``(B, T)``) is the general case and a
``(B,)`` timestep is its broadcast.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from moviola.conditioning import Conditioning, check_accepted
from moviola.nn import Attention, LabelEmbedder, Mlp, TimestepEmbedder, modulate, sincos_2d, sincos_temporal


@functools.lru_cache(maxsize=32)
def _spatial_pos(h: int, w: int, dim: int) -> torch.Tensor:
    return sincos_2d(h, w, dim)


@functools.lru_cache(maxsize=32)
def _temporal_pos(t: int, dim: int) -> torch.Tensor:
    return sincos_temporal(t, dim)


class LatteBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning that attends along dim -2 of (B, G, L, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: (B, G, L, D); c: conditioning broadcastable to x, e.g. (B, G, 1, D) or (B, 1, L, D)
        B, G, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_msa, scale_msa).reshape(B * G, L, D)  # (B·G, L, D)
        x = x + gate_msa * self.attn(h).view(B, G, L, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN shift/scale, then a linear map from tokens to patches of output channels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


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


class Latte(nn.Module):
    """Latte denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``."""

    def __init__(self, in_channels: int = 4, patch_size: int = 2, hidden_size: int = 1152, depth: int = 28,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 0,
                 learned_sigma: bool = False, qk_norm: bool = False):
        super().__init__()
        if depth % 2:
            raise ValueError(f"Latte depth counts spatial + temporal blocks and must be even, got {depth}")
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learned_sigma else in_channels
        self.learned_sigma = learned_sigma
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.accepts = frozenset({"labels"} if num_classes else ())

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if num_classes else None
        self.spatial_blocks = nn.ModuleList(
            LatteBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth // 2))
        self.temporal_blocks = nn.ModuleList(
            LatteBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth // 2))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialization; the zeroed adaLN and output layers make each block start as identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear on flattened patches
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for block in (*self.spatial_blocks, *self.temporal_blocks, self.final_layer):
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def condition(self, t: torch.Tensor, cond: Optional[Conditioning], batch: int, frames: int) -> torch.Tensor:
        """Per-frame conditioning vectors (B, T, D) from the timesteps (and class labels)."""
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)  # a (B,) timestep is a per-frame one, broadcast
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must have shape (B,) or (B, T) = ({batch}, {frames}), got {tuple(t.shape)}")
        c = self.t_embedder(t)  # (B, T, D)
        if self.y_embedder is not None:
            if cond is None or cond.labels is None:
                raise ValueError(f"this Latte is class-conditional ({self.num_classes} classes): "
                                 "pass Conditioning(labels=...) (-1 for the null class)")
            c = c + self.y_embedder(cond.labels)[:, None]  # (B, 1, D) broadcast over frames
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None) -> torch.Tensor:
        check_accepted(cond, self.accepts, type(self).__name__)
        B, C, T, H, W = x.shape
        p = self.patch_size
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {C}")
        if H % p or W % p:
            raise ValueError(f"frame size {H}×{W} is not divisible by the patch size {p}")
        h, w, D = H // p, W // p, self.hidden_size

        tok = self.x_embedder(x)  # (B, T, N, D)
        tok = tok + _spatial_pos(h, w, D).to(tok.device, tok.dtype)
        c = self.condition(t, cond, B, T)  # (B, T, D)
        c_spatial, c_temporal = c[:, :, None], c[:, None]  # (B, T, 1, D), (B, 1, T, D)
        temp_pos = _temporal_pos(T, D).to(tok.device, tok.dtype)  # (T, D)

        for i, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            tok = spatial(tok, c_spatial)  # (B, T, N, D), attention within each frame
            tok = tok.transpose(1, 2)  # (B, N, T, D)
            if i == 0:
                tok = tok + temp_pos  # added once, before the first temporal block (as Latte)
            tok = temporal(tok, c_temporal)  # (B, N, T, D), attention across frames
            tok = tok.transpose(1, 2)  # (B, T, N, D)

        out = self.final_layer(tok, c_spatial)  # (B, T, N, p·p·C_out)
        return self.unpatchify(out, h, w)

    def unpatchify(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, T = out.shape[:2]
        p, co = self.patch_size, self.out_channels
        out = out.reshape(B, T, h, w, p, p, co)  # (B, T, h, w, p, p, C)
        out = out.permute(0, 6, 1, 2, 4, 3, 5)  # (B, C, T, h, p, w, p)
        return out.reshape(B, co, T, h * p, w * p)  # (B, C, T, H, W)
