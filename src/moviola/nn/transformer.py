"""The DiT-style transformer block every transformer family builds on, and its final layer.

Tokens are 4-D, ``(B, G, L, D)``: a block attends along dim -2 within each of the G groups, so the
same block is spatial on ``(B, T, N, D)`` (patches of a frame) and temporal on ``(B, N, T, D)``
(frames at a patch). How it hears the conditioning is its ``modulation`` (nn/modulation.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.nn.attention import Attention, CrossAttention
from moviola.nn.mlp import Mlp
from moviola.nn.modulation import Modulation, gated, modulated, modulation

Rope = Optional[tuple[torch.Tensor, torch.Tensor]]
Context = Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]  # text tokens (B, S, D), mask (B, S)


class ModulatedBlock(nn.Module):
    """A module whose LayerNorms are modulated by the conditioning vector (see nn/modulation.py)."""

    def modulate_with(self, kind: "str | Modulation", dim: int, chunks: int) -> None:
        self.modulation = modulation(kind)
        self.modulation.attach(self, dim, chunks)

    @property
    def injection(self) -> str:
        return self.modulation.kind

    def vectors(self, c: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        return self.modulation.vectors(self, c)


def cross_attend(block: nn.Module, x: torch.Tensor, context: Context) -> torch.Tensor:
    """x + cross-attention to the text; x (B, G, L, D). Queries are the un-normalized tokens, as PixArt."""
    if block.cross_attn is None or context is None:
        return x
    B, G, L, D = x.shape
    text, mask = context
    # every frame of a video attends to the same text, and softmax is per query: one call over G·L
    out = block.cross_attn(x.reshape(B, G * L, D), text, mask)  # (B, G·L, D)
    return x + out.view(B, G, L, D)


class TransformerBlock(ModulatedBlock):
    """Self-attention along dim -2 of (B, G, L, D), optional cross-attention to text (``context_dim``), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: "str | Modulation" = "adaln", context_dim: Optional[int] = None):
        super().__init__()
        mod = modulation(injection)
        self.norm1 = mod.norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = mod.norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulate_with(mod, dim, 6)  # shift, scale, gate for the attention and for the MLP
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, G, L, D); c: conditioning broadcastable to x, e.g. (B, G, 1, D) or (B, 1, L, D)
        B, G, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.vectors(c)
        h = modulated(self.norm1(x), shift_msa, scale_msa).reshape(B * G, L, D)  # (B·G, L, D)
        x = x + gated(gate_msa, self.attn(h, rope=rope).view(B, G, L, D))
        x = cross_attend(self, x, context)
        x = x + gated(gate_mlp, self.mlp(modulated(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FinalLayer(ModulatedBlock):
    """Modulated LayerNorm, then a linear map from tokens to patches of output channels."""

    def __init__(self, dim: int, out_features: int, injection: "str | Modulation" = "adaln"):
        super().__init__()
        mod = modulation(injection)
        self.norm_final = mod.norm(dim)
        self.linear = nn.Linear(dim, out_features)
        self.modulate_with(mod, dim, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # c: the conditioning vector (B, T, 1, D)
        shift, scale = self.modulation.final_vectors(self, c)
        return self.linear(modulated(self.norm_final(x), shift, scale))
