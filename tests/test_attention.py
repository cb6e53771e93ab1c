"""moviola's attention under CPU bf16 autocast runs SDPA in float32 (see nn/attention.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from moviola.nn.attention import attention


def test_cpu_autocast_attention_is_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 16, 8, generator=g).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = attention(q, k, v)
        autocast_bf16 = F.scaled_dot_product_attention(q, k, v)
    ref32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert ours.dtype == torch.bfloat16
    # ours is the fp32 result rounded once to bf16; plain SDPA under autocast computes in bf16
    assert torch.equal(ours, ref32.bfloat16())
    assert not torch.equal(autocast_bf16, ref32.bfloat16())


def test_attention_matches_naive_softmax_in_float32():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=g) for _ in range(3))
    naive = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    assert torch.allclose(attention(q, k, v), naive, atol=1e-5)
