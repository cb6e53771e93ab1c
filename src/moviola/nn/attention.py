"""Multi-head attention: self-attention with a fused qkv projection (DiT/timm key names: qkv, proj),
cross-attention to a token sequence (text), W.A.L.T's attention to the tokens and the text together
(``ConcatKVAttention``), and rotary position embedding (RoPE) on q and k."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` over (B, heads, L, head_dim).

    On CPU, half-precision inputs are computed in float32: PyTorch's CPU flash-attention
    backward is 2-7× slower in bf16 than in fp32 for our shapes (benchmarks/attention.py),
    while everything around it (the matmuls) keeps its bf16 speed-up. Autocast is switched off
    around the call, or it would cast the float32 inputs straight back to bf16.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(i, i + hd/2)`` of x (..., L, hd) by position angles; cos, sin: (L, hd/2).

    q·k after rotating both depends only on the difference of their positions (RoPE, Su et al.).
    """
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # each (..., L, hd/2)
    cos, sin = cos.to(x1.dtype), sin.to(x1.dtype)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim)  # (B, L, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q, k, v, attn_mask)  # (B, h, L, hd)
        out = out.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Queries from the tokens, keys and values from a context sequence (text), PixArt/Latte-1 style.

    ``mask`` (B, S) marks the real context tokens (True). A row with no real token (the empty
    prompt of classifier-free guidance) contributes nothing: its output is zero, not the
    average over padding.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L, D = x.shape
        S = context.shape[1]
        q = self.q(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, L, hd)
        kv = self.kv(context).view(B, S, 2, self.num_heads, self.head_dim)  # (B, S, 2, h, hd)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, S, hd)
        attn_mask = any_real = None
        if mask is not None:
            mask = mask.to(torch.bool)
            any_real = mask.any(dim=-1)  # (B,)
            attn_mask = (mask | ~any_real[:, None])[:, None, None, :]  # (B, 1, 1, S); empty rows see all
        out = attention(q, k, v, attn_mask)  # (B, h, L, hd)
        out = self.proj(out.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
        if any_real is not None:
            out = out * any_real[:, None, None].to(out.dtype)  # empty prompt -> no contribution
        return out


class ConcatKVAttention(nn.Module):
    """W.A.L.T's text attention: queries from the tokens of a group (a window), keys and values from
    those tokens and the context together, ``k = v = concat[x, context]`` (the paper's Fig. 2).

    ``x`` is (B, G, L, D): G groups of L tokens; each group attends to its own tokens and to the
    context (B, S, D), which must already have the token width. ``mask`` (B, S) marks the real context
    tokens; a row with none (the empty prompt) attends to its own tokens only.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # one projection for the tokens and the context
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, G, L, D = x.shape
        S, h, hd = context.shape[1], self.num_heads, self.head_dim
        q = self.q(x).view(B * G, L, h, hd).transpose(1, 2)  # (B·G, h, L, hd)
        kv_x = self.kv(x).view(B * G, L, 2, h, hd)  # (B·G, L, 2, h, hd)
        kv_c = self.kv(context).view(B, 1, S, 2 * D).expand(B, G, S, 2 * D)  # (B, G, S, 2D), shared by the groups
        kv_c = kv_c.reshape(B * G, S, 2, h, hd)  # (B·G, S, 2, h, hd)
        k, v = torch.cat([kv_x, kv_c], dim=1).permute(2, 0, 3, 1, 4).unbind(0)  # each (B·G, h, L+S, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None
        if mask is not None:
            keep = torch.cat([mask.new_ones(B, L, dtype=torch.bool), mask.to(torch.bool)], dim=1)  # (B, L+S)
            attn_mask = keep[:, None, None, :].expand(B, G, 1, L + S).reshape(B * G, 1, 1, L + S)
        out = attention(q, k, v, attn_mask)  # (B·G, h, L, hd)
        return self.proj(out.transpose(1, 2).reshape(B, G, L, D))  # (B, G, L, D)
