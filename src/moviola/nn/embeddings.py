"""Embeddings shared by every backbone: timesteps, class labels, sin-cos positions.

Sin-cos orderings follow the models whose weights we load: timesteps are ``[cos, sin]``
(DiT/ADM), positions are ``[sin, cos]`` (MAE, used by DiT and Latte for ``pos_embed``).
Positions are computed for the input's size on every call, never stored in the weights, so
other frame counts and non-square sizes run.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from moviola.conditioning import NULL_LABEL


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos, sin]`` order. t: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE 1-D sin-cos: ``[sin, cos]`` of positions × 1/10000^(2i/dim). positions: (L,) -> (L, dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.double()[:, None] * omega[None]  # (L, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _grid(n: int, base_size: Optional[int], interpolation_scale: float) -> torch.Tensor:
    """Positions of n tokens along one axis: integers, or PixArt's ``i / (n / base) / scale``."""
    if base_size is None and interpolation_scale == 1.0:
        return torch.arange(n)
    pos = torch.arange(n, dtype=torch.float32)  # float32 first, as diffusers computes it
    if base_size is not None:
        pos = pos / (n / base_size)
    return pos / interpolation_scale


def sincos_2d(h: int, w: int, dim: int, base_size: Optional[int] = None,
              interpolation_scale: float = 1.0) -> torch.Tensor:
    """2-D sin-cos for an h×w token grid in row-major order -> (h*w, dim), float32.

    The first half encodes the column (x) index, the second half the row (y) index, as in
    MAE/DiT's ``get_2d_sincos_pos_embed`` (so stored official embeddings compare equal).
    PixArt / diffusers' Latte-1 rescale the positions so that any grid spans the training grid
    of ``base_size`` tokens, divided by ``interpolation_scale``; without them positions are
    the integer indices (DiT, Latte).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows = _grid(h, base_size, interpolation_scale).repeat_interleave(w)  # (h*w,) y position of each token
    cols = _grid(w, base_size, interpolation_scale).repeat(h)  # (h*w,) x position of each token
    return torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1).float()


def sincos_temporal(num_frames: int, dim: int) -> torch.Tensor:
    """1-D sin-cos over frame indices -> (T, dim), float32 (Latte's ``temp_embed``)."""
    return sincos_1d(torch.arange(num_frames), dim).float()


def rope_1d(num_positions: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding tables for positions 0..L-1: ``(cos, sin)``, each (L, head_dim/2), float32.

    Channel pair i turns at frequency theta^(-2i/head_dim), as in RoFormer; ``apply_rope`` pairs
    channel i with channel i + head_dim/2.
    """
    if head_dim % 2:
        raise ValueError(f"rotary position embedding needs an even head width, got {head_dim}")
    freqs = theta ** (-torch.arange(head_dim // 2, dtype=torch.float64) * 2 / head_dim)  # (hd/2,)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * freqs  # (L, hd/2)
    return torch.cos(angles).float(), torch.sin(angles).float()


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sin-cos features, then an MLP (DiT's ``t_embedder``)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., D)
        freq = timestep_embedding(t, self.frequency_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with one extra row for the null class used by guidance.

    ``NULL_LABEL`` (-1) selects the extra row, so callers never need the class count to drop a
    label (the official code hard-codes ``y_null = 101``; we do not).
    """

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dtype.is_floating_point:
            raise ValueError("class labels must be integers")
        bad = (labels >= self.num_classes) | ((labels < 0) & (labels != NULL_LABEL))
        if bool(bad.any()):
            raise ValueError(f"class label out of range [0, {self.num_classes}): {labels[bad].tolist()}")
        idx = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(idx)
