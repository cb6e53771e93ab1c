"""Attention forward+backward on this device: bf16 SDPA vs fp32 SDPA on bf16 inputs.

Why ``moviola.nn.attention.attention`` computes CPU attention in float32 under bf16 autocast.
Shapes are Latte's at the demo config (d 192, 6 heads, 32×32×16 pixels, patch 4, batch 16):
temporal attention is (B·N, h, T, hd) = (1024, 6, 16, 32), spatial (B·T, h, N, hd) = (256, 6, 64, 32).

    python benchmarks/attention.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from moviola.nn.attention import attention


def best_ms(fn, shape, dtype, repeats: int = 5) -> float:
    """Forward + backward under bf16 autocast, as in training (autocast decides SDPA's dtype)."""
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v)
        out.float().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| shape (B, h, L, hd) | bf16 SDPA ms | moviola attention (fp32 inside) ms | ratio |")
    print("|---|---|---|---|")
    for shape in [(1024, 6, 16, 32), (256, 6, 64, 32)]:
        plain = best_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), shape, torch.bfloat16)
        ours = best_ms(lambda q, k, v: attention(q, k, v), shape, torch.bfloat16)
        print(f"| {shape} | {plain:.0f} | {ours:.0f} | {plain / ours:.2f}× |")


if __name__ == "__main__":
    main()
