"""Multi-head self-attention with a fused qkv projection (DiT/timm key names: qkv, proj)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` over (B, heads, L, head_dim).

    On CPU, half-precision inputs are computed in float32: PyTorch's CPU flash-attention
    backward is about 2× slower in bf16 than in fp32 for our shapes (benchmarks/attention.py),
    while everything around it (the matmuls) keeps its bf16 speed-up.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.float()
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


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

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim)  # (B, L, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, attn_mask)  # (B, h, L, hd)
        out = out.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        return self.proj(out)
