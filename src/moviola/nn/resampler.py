"""The Perceiver resampler of IP-Adapter, VideoCrafter1's image-to-video and DynamiCrafter: a fixed number of
learned queries read an image encoder's patch tokens and become the image tokens the U-Net cross-attends to.

::

    tokens (B, N, embedding_dim) -> proj_in -> x (B, N, dim)
    latents (1, Q, dim), learned, repeated over the batch
    depth × [ latents += PerceiverAttention(x, latents)   # queries: the latents; keys/values: [x ; latents]
              latents += FeedForward(latents) ]          # LayerNorm -> Linear -> GELU -> Linear
    proj_out (dim -> output_dim) -> norm_out (LayerNorm)  -> (B, Q, output_dim)

Each attention normalizes the tokens (``norm1``) and the latents (``norm2``) first, and lets the latents
attend to the tokens and to themselves together. Nothing depends on the tokens' order: the output is invariant
to permuting them (there are no positions; the image encoder put them in already).

Parameter names map 1:1 onto the official ``Resampler`` (VideoCrafter ``lvdm/modules/encoders/ip_resampler.py``,
IP-Adapter's and DynamiCrafter's are the same), so an official ``image_proj_model`` state dict loads with
``strict=True`` and no renaming:

=====================================  =============================================  ===========================
ours                                   official                                       shape
=====================================  =============================================  ===========================
``latents``                            ``latents``                                    (1, Q·video_length, dim)
``proj_in.weight`` / ``.bias``         ``proj_in.weight`` / ``.bias``                 (dim, embedding_dim)
``layers.{i}.0.norm1.*``               ``layers.{i}.0.norm1.*`` (tokens' LayerNorm)   (dim,)
``layers.{i}.0.norm2.*``               ``layers.{i}.0.norm2.*`` (latents' LayerNorm)  (dim,)
``layers.{i}.0.to_q.weight``           ``layers.{i}.0.to_q.weight`` (no bias)         (heads·dim_head, dim)
``layers.{i}.0.to_kv.weight``          ``layers.{i}.0.to_kv.weight`` (no bias; k, v)  (2·heads·dim_head, dim)
``layers.{i}.0.to_out.weight``         ``layers.{i}.0.to_out.weight`` (no bias)       (dim, heads·dim_head)
``layers.{i}.1.0.*``                   ``layers.{i}.1.0.*`` (feed-forward LayerNorm)  (dim,)
``layers.{i}.1.1.weight``              ``layers.{i}.1.1.weight`` (no bias)            (dim·ff_mult, dim)
``layers.{i}.1.3.weight``              ``layers.{i}.1.3.weight`` (no bias)            (dim, dim·ff_mult)
``proj_out.weight`` / ``.bias``        ``proj_out.weight`` / ``.bias``                (output_dim, dim)
``norm_out.weight`` / ``.bias``        ``norm_out.weight`` / ``.bias``                (output_dim,)
=====================================  =============================================  ===========================

(``layers.{i}.1.2`` is the parameter-free GELU.) The official attention scales q and k each by
``dim_head^(-1/4)`` before the product and takes the softmax in float32; that is the ordinary
``1/sqrt(dim_head)`` attention computed here (in float32 on CPU for half inputs). ``video_length`` is
DynamiCrafter's: ``num_queries`` learned queries per frame, ``Q = num_queries · video_length``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.nn.attention import attention


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class PerceiverAttention(nn.Module):
    """The latents attend to the (normalized) tokens and to themselves: ``to_out(softmax(q kᵀ/√d) v)`` with
    ``q = to_q(norm2(latents))`` and ``k, v = to_kv([norm1(tokens) ; norm2(latents)])``; all bias-free."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)  # the tokens'
        self.norm2 = nn.LayerNorm(dim)  # the latents'
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, dim), latents (B, Q, dim) -> (B, Q, dim), the update (the caller adds the residual)."""
        B, Q, _ = latents.shape
        tokens, latents = self.norm1(tokens), self.norm2(latents)

        def split(y: torch.Tensor) -> torch.Tensor:  # (B, S, heads·dim_head) -> (B, heads, S, dim_head)
            return y.view(B, y.shape[1], self.heads, self.dim_head).transpose(1, 2)

        k, v = self.to_kv(torch.cat([tokens, latents], dim=1)).chunk(2, dim=-1)  # each (B, N+Q, inner)
        out = attention(split(self.to_q(latents)), split(k), split(v))  # (B, heads, Q, dim_head)
        return self.to_out(out.transpose(1, 2).reshape(B, Q, self.heads * self.dim_head))


class PerceiverFeedForward(nn.Sequential):
    """LayerNorm -> Linear(dim, dim·mult) -> GELU -> Linear(dim·mult, dim), bias-free linears (indices 0-3, the
    official ``FeedForward``'s)."""

    def __init__(self, dim: int, mult: float = 4):
        inner = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class ResamplerLayer(nn.ModuleList):
    """``[PerceiverAttention, PerceiverFeedForward]`` (indices 0 and 1, as the official nested ModuleList),
    each a residual update of the latents."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: float):
        super().__init__([PerceiverAttention(dim, dim_head, heads), PerceiverFeedForward(dim, ff_mult)])

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        attn, ff = self[0], self[1]
        latents = latents + attn(tokens, latents)
        return latents + ff(latents)


class Resampler(nn.Module):
    """``Resampler(dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim, ff_mult)``:
    ``model(tokens (B, N, embedding_dim)) -> (B, num_queries·video_length, output_dim)`` (module docstring).

    The defaults are the official class's; VideoCrafter1's I2V uses ``dim=1024, depth=4, dim_head=64,
    heads=12, num_queries=16, embedding_dim=1280, output_dim=1024, ff_mult=4`` on OpenCLIP-H's 257 tokens.
    The queries start as ``randn / √dim``, as there.
    """

    def __init__(self, dim: int = 1024, depth: int = 8, dim_head: int = 64, heads: int = 16, num_queries: int = 8,
                 embedding_dim: int = 768, output_dim: int = 1024, ff_mult: float = 4,
                 video_length: Optional[int] = None):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("dim_head", dim_head), ("heads", heads),
                            ("num_queries", num_queries), ("embedding_dim", embedding_dim),
                            ("output_dim", output_dim)):
            _positive_int(name, value)
        if video_length is not None:
            _positive_int("video_length", video_length)
        if isinstance(ff_mult, bool) or not isinstance(ff_mult, (int, float)) or int(dim * ff_mult) < 1:
            raise ValueError(f"ff_mult must be a positive number, got {ff_mult!r}")
        self.embedding_dim, self.output_dim = embedding_dim, output_dim
        self.num_tokens = num_queries * (video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, self.num_tokens, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(ResamplerLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.embedding_dim or tokens.shape[1] < 1:
            raise ValueError(f"Resampler input must have shape (B, N >= 1, embedding_dim={self.embedding_dim}), "
                             f"got {tuple(tokens.shape)}")
        x = self.proj_in(tokens.to(self.proj_in.weight.dtype))  # (B, N, dim)
        latents = self.latents.expand(tokens.shape[0], -1, -1)  # (B, Q, dim)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm_out(self.proj_out(latents))  # (B, Q, output_dim)
