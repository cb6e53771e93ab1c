"""Latte's own blocks: the factorized-attention block (layout factorized_attention) and the
factorized-heads attention and block (layout factorized_heads).

The plain transformer block, the final layer, the patch embeddings and the three kinds of
modulation are shared by every transformer family and live in ``nn/``. Tokens are ``(B, T, N, D)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.nn import Attention, CrossAttention, Mlp, apply_rope
from moviola.nn.attention import attention
from moviola.nn.modulation import gated, modulated, modulation
from moviola.nn.transformer import Context, ModulatedBlock, Rope, cross_attend

class FactorizedAttentionBlock(ModulatedBlock):
    """Variant 3: one block, a spatial self-attention, then a temporal one, then the MLP.

    Works on (B, T, N, D). The temporal attention sees only the first ``num_video`` frames
    (the others are single images of joint training, which it leaves untouched).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: str = "adaln", context_dim: Optional[int] = None):
        super().__init__()
        mod = modulation(injection)
        self.norm1 = mod.norm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm_temporal = mod.norm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = mod.norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulate_with(mod, dim, 9)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], num_video: int, rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, T, N, D); c: (B, T, 1, D) per-frame conditioning
        B, T, N, D = x.shape
        (shift_s, scale_s, gate_s, shift_t, scale_t, gate_t,
         shift_mlp, scale_mlp, gate_mlp) = self.vectors(c)
        h = modulated(self.norm1(x), shift_s, scale_s).reshape(B * T, N, D)  # (B·T, N, D)
        x = x + gated(gate_s, self.attn(h).view(B, T, N, D))
        x = cross_attend(self, x, context)

        video, images = x[:, :num_video], x[:, num_video:]  # (B, Tv, N, D), (B, T-Tv, N, D)
        sl = slice(0, num_video)
        h = modulated(self.norm_temporal(video), *(None if v is None else v[:, sl] for v in (shift_t, scale_t)))
        h = h.transpose(1, 2).reshape(B * N, num_video, D)  # (B·N, Tv, D)
        out = self.temporal_attn(h, rope=rope).view(B, N, num_video, D).transpose(1, 2)  # (B, Tv, N, D)
        video = video + gated(None if gate_t is None else gate_t[:, sl], out)
        x = video if images.shape[1] == 0 else torch.cat([video, images], dim=1)  # (B, T, N, D)

        x = x + gated(gate_mlp, self.mlp(modulated(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FactorizedHeadAttention(nn.Module):
    """Variant 4's attention: of one qkv projection, the first ``spatial_heads`` heads attend over
    the patches of a frame, the other heads over the frames at a patch; the head outputs are
    concatenated and projected as in ordinary multi-head attention.

    Frames past ``num_video`` (joint-training images) are clips of one frame: their temporal
    heads attend to themselves only.
    """

    def __init__(self, dim: int, num_heads: int, spatial_heads: Optional[int] = None, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.spatial_heads = num_heads // 2 if spatial_heads is None else spatial_heads
        if not 0 <= self.spatial_heads <= num_heads:
            raise ValueError(f"spatial_heads must be in [0, {num_heads}], got {self.spatial_heads}")
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, num_video: int, rope: Rope = None) -> torch.Tensor:
        B, T, N, D = x.shape
        h, hd, hs = self.num_heads, self.head_dim, self.spatial_heads
        qkv = self.qkv(x).view(B, T, N, 3, h, hd)  # (B, T, N, 3, h, hd)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, h, T, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        parts = []
        if hs > 0:
            qs, ks, vs = (z[:, :hs].transpose(1, 2).reshape(B * T, hs, N, hd) for z in (q, k, v))  # (B·T, hs, N, hd)
            parts.append(attention(qs, ks, vs).view(B, T, hs, N, hd))
        if hs < h:
            ht = h - hs
            qt, kt, vt = (z[:, hs:].permute(0, 3, 1, 2, 4) for z in (q, k, v))  # each (B, N, ht, T, hd)
            qv, kv_, vv = (z[:, :, :, :num_video].reshape(B * N, ht, num_video, hd) for z in (qt, kt, vt))
            if rope is not None:
                qv, kv_ = apply_rope(qv, *rope), apply_rope(kv_, *rope)
            out = attention(qv, kv_, vv).view(B, N, ht, num_video, hd)  # (B, N, ht, Tv, hd)
            if num_video < T:  # a one-frame clip attends to itself: the output is its value
                out = torch.cat([out, vt[:, :, :, num_video:]], dim=3)  # (B, N, ht, T, hd)
            parts.append(out.permute(0, 3, 2, 1, 4))  # (B, T, ht, N, hd)
        out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]  # (B, T, h, N, hd)
        return self.proj(out.transpose(2, 3).reshape(B, T, N, D))  # (B, T, N, D)


class FactorizedHeadsBlock(ModulatedBlock):
    """Variant 4: a transformer block whose attention splits its heads between space and time."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: str = "adaln", context_dim: Optional[int] = None, spatial_heads: Optional[int] = None):
        super().__init__()
        mod = modulation(injection)
        self.norm1 = mod.norm(dim)
        self.attn = FactorizedHeadAttention(dim, num_heads, spatial_heads, qk_norm)
        self.norm2 = mod.norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulate_with(mod, dim, 6)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], num_video: int, rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, T, N, D); c: (B, T, 1, D) per-frame conditioning
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.vectors(c)
        x = x + gated(gate_msa, self.attn(modulated(self.norm1(x), shift_msa, scale_msa), num_video, rope))
        x = cross_attend(self, x, context)
        x = x + gated(gate_mlp, self.mlp(modulated(self.norm2(x), shift_mlp, scale_mlp)))
        return x
