"""Window attention (nn/window.py), W.A.L.T's text attention and AdaLN-LoRA (nn/attention.py,
nn/modulation.py), each against a reference written plainly here: loops over windows and tokens, the
softmax by hand, the paper's equations."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from moviola.nn import (AdaLNLoRA, AdaLNLoRAShared, ConcatKVAttention, RelativePositionBias, WindowAttention,
                        resize_relative_table, resize_table, window_merge, window_partition)
from moviola.nn.transformer import ModulatedBlock

torch.set_num_threads(1)


def naive_offset_row(offset, window):
    """The table row of a (dt, dh, dw) offset: offsets shifted to be non-negative, then row-major."""
    (dt, dh, dw), (wt, wh, ww) = offset, window
    return ((dt + wt - 1) * (2 * wh - 1) + (dh + wh - 1)) * (2 * ww - 1) + (dw + ww - 1)


def naive_window_attention(attn: WindowAttention, x: torch.Tensor, window) -> torch.Tensor:
    """Loop over batch items and windows; gather the window's tokens (t, h, w order); softmax by hand."""
    B, T, H, W, D = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    out = torch.zeros_like(x)
    table = attn.relative_bias.relative_position_bias_table if attn.relative_bias is not None else None
    for b in range(B):
        for t0, h0, w0 in itertools.product(range(0, T, window[0]), range(0, H, window[1]), range(0, W, window[2])):
            coords = list(itertools.product(range(t0, t0 + window[0]), range(h0, h0 + window[1]),
                                            range(w0, w0 + window[2])))
            tokens = torch.stack([x[b, t, h, w] for t, h, w in coords])  # (L, D)
            q, k, v = attn.qkv(tokens).view(len(coords), 3, heads, hd).unbind(1)  # each (L, heads, hd)
            q, k = attn.q_norm(q), attn.k_norm(k)
            scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd)  # (heads, L, L)
            if table is not None:
                for i, j in itertools.product(range(len(coords)), repeat=2):
                    off = tuple(a - c for a, c in zip(coords[i], coords[j]))
                    scores[:, i, j] = scores[:, i, j] + table[naive_offset_row(off, window)]
            probs = scores.exp() / scores.exp().sum(-1, keepdim=True)
            o = torch.einsum("hij,jhd->ihd", probs, v).reshape(len(coords), D)
            o = attn.proj(o)
            for i, (t, h, w) in enumerate(coords):
                out[b, t, h, w] = o[i]
    return out


def make_attention(window, dim=8, heads=2, qk_norm=True, seed=0):
    torch.manual_seed(seed)
    attn = WindowAttention(dim, heads, window, qk_norm=qk_norm)
    with torch.no_grad():
        attn.relative_bias.relative_position_bias_table.normal_(0, 1)  # a bias big enough to matter
    return attn


def test_partition_and_merge_are_inverse_and_group_window_tokens():
    x = torch.arange(2 * 4 * 4 * 6).float().view(2, 4, 4, 6, 1)
    win = window_partition(x, (2, 2, 3))
    assert win.shape == (2 * 2 * 2 * 2, 12, 1)
    assert torch.equal(window_merge(win, (2, 2, 3), (2, 4, 4, 6)), x)
    # the second window of the first item: frames 0-1, rows 0-1, columns 3-5
    expect = torch.stack([x[0, t, h, w] for t in range(2) for h in range(2) for w in range(3, 6)])
    assert torch.equal(win[1], expect)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_a_window_covering_the_clip_is_full_attention(qk_norm):
    grid = (2, 3, 4)
    attn = make_attention(grid, qk_norm=qk_norm)
    x = torch.randn(2, *grid, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), naive_window_attention(attn, x, grid), atol=1e-5, rtol=1e-5)
        # the same without the bias: plain multi-head attention over all T·H·W tokens
        attn.relative_bias = None
        torch.testing.assert_close(attn(x), naive_window_attention(attn, x, grid), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(1, 2, 2), (2, 1, 2), (1, 4, 4)])
def test_windowed_attention_equals_a_loop_over_windows(window):
    attn = make_attention(window)
    x = torch.randn(2, 2, 4, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), naive_window_attention(attn, x, window), atol=1e-5, rtol=1e-5)


def test_a_token_outside_a_window_leaves_every_output_inside_it_unchanged():
    window = (2, 2, 2)
    attn = make_attention(window)
    x = torch.randn(1, 2, 4, 4, 8)
    y = x.clone()
    y[0, 1, 3, 3] += 5.0  # in the window of rows 2-3, columns 2-3
    with torch.no_grad():
        a, b = attn(x), attn(y)
    inside = torch.zeros(2, 4, 4, dtype=torch.bool)
    inside[:, 2:, 2:] = True
    assert torch.equal(a[0][~inside], b[0][~inside])  # every other window: bit for bit
    assert not torch.allclose(a[0][inside], b[0][inside])  # the changed window did change


def test_frames_after_the_windowed_ones_attend_to_themselves_only():
    attn = make_attention((2, 2, 2))
    x = torch.randn(2, 5, 4, 4, 8)  # 2 video frames, then 3 image frames
    with torch.no_grad():
        out = attn(x, num_windowed=2)
        W, bias = attn.qkv.weight, attn.qkv.bias
        value = x[:, 2:] @ W[16:].T + bias[16:]  # the value projection, written out
        torch.testing.assert_close(out[:, 2:], attn.proj(value))
        y = x.clone()
        y[:, :2] = torch.randn_like(y[:, :2])  # other video frames: the images do not see them
        assert torch.equal(attn(y, num_windowed=2)[:, 2:], out[:, 2:])
        torch.testing.assert_close(out[:, :2], attn(x[:, :2]))  # and the video frames do not see the images


def test_the_relative_bias_depends_only_on_offsets():
    window = (2, 3, 2)
    rb = RelativePositionBias(window, num_heads=3)
    with torch.no_grad():
        rb.relative_position_bias_table.copy_(torch.randn_like(rb.relative_position_bias_table))
    bias = rb()  # (heads, L, L)
    coords = list(itertools.product(*(range(k) for k in window)))
    assert bias.shape == (3, len(coords), len(coords))
    by_offset = {}
    for i, j in itertools.product(range(len(coords)), repeat=2):
        off = tuple(a - b for a, b in zip(coords[i], coords[j]))
        torch.testing.assert_close(bias[:, i, j], rb.relative_position_bias_table[naive_offset_row(off, window)])
        by_offset.setdefault(off, []).append(bias[:, i, j])
    assert len(by_offset) == math.prod(2 * k - 1 for k in window)  # every row of the table is used
    for values in by_offset.values():
        assert all(torch.equal(v, values[0]) for v in values)


def test_relative_tables_resize_by_offsets_in_time_and_bicubic_in_space():
    table = torch.randn(3 * 5 * 5, 2)  # window (2, 3, 3)
    assert resize_relative_table(table, (2, 3, 3), (2, 3, 3)) is table
    shrunk = resize_relative_table(table, (2, 3, 3), (1, 3, 3))  # offset dt = 0 only: the middle rows
    torch.testing.assert_close(shrunk, table.view(3, 25, 2)[1])
    grown = resize_relative_table(table, (2, 3, 3), (2, 3, 5))
    assert grown.shape == (3 * 5 * 9, 2)
    expect = F.interpolate(table.view(3, 5, 5, 2).permute(0, 3, 1, 2), size=(5, 9), mode="bicubic",
                           align_corners=False).permute(0, 2, 3, 1).reshape(-1, 2)
    torch.testing.assert_close(grown, expect)
    # an absolute table keeps frame i's rows when it shrinks in time
    abs_table = torch.randn(5, 4, 4, 8)
    assert torch.equal(resize_table(abs_table, (3, 4, 4)), abs_table[:3])


def test_concat_kv_attention_attends_to_its_group_and_the_text():
    torch.manual_seed(0)
    attn = ConcatKVAttention(8, 2, qk_norm=True)
    x = torch.randn(2, 3, 4, 8)  # 3 groups of 4 tokens
    text = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)  # the second: the empty prompt
    with torch.no_grad():
        out = attn(x, text, mask)
        for b, g in itertools.product(range(2), range(3)):
            keys = torch.cat([x[b, g], text[b][mask[b]]])  # k = v = concat[q, text]
            q = attn.q_norm(attn.q(x[b, g]).view(4, 2, 4))
            k, v = attn.kv(keys).view(len(keys), 2, 2, 4).unbind(1)
            k = attn.k_norm(k)
            scores = torch.einsum("ihd,jhd->hij", q, k) / 2.0
            probs = scores.exp() / scores.exp().sum(-1, keepdim=True)
            expect = attn.proj(torch.einsum("hij,jhd->ihd", probs, v).reshape(4, 8))
            torch.testing.assert_close(out[b, g], expect, atol=1e-5, rtol=1e-5)


def adaln_lora_block(dim, rank):
    block = ModulatedBlock()
    block.modulate_with(AdaLNLoRA(rank), dim, 6)
    return block


@pytest.mark.parametrize("rank", [1, 2, 16])
def test_adaln_lora_has_the_parameter_count_of_the_formula(rank):
    d, layers = 24, 5
    shared = AdaLNLoRAShared(d, 6)
    blocks = [adaln_lora_block(d, rank) for _ in range(layers)]
    count = sum(p.numel() for m in [shared, *blocks] for p in m.parameters())
    # A^1 = MLP(c + t): W (6d × d) and b (6d); each layer's update: W_b^i (6d × r) and W_a^i (r × d)
    assert count == 6 * d * d + 6 * d + layers * (rank * d + 6 * d * rank)
    assert count == AdaLNLoRA.parameter_count(d, 6, rank, layers)
    assert sum(p.numel() for p in adaln_lora_block(d, 0).parameters()) == 0  # rank 0: A^1 itself


def test_adaln_lora_is_eq_3_and_starts_at_zero():
    d, r = 12, 3
    shared, block = AdaLNLoRAShared(d, 6), adaln_lora_block(d, r)
    c = torch.randn(2, d)
    shared.zero_init()
    block.modulation.zero_init(block)
    assert all(torch.equal(v, torch.zeros(2, d)) for v in block.vectors(shared(c)))
    with torch.no_grad():
        for p in [*shared.parameters(), *block.parameters()]:
            p.normal_()
    vectors = block.vectors(shared(c))
    W_a, W_b = block.adaLN_lora[0].weight, block.adaLN_lora[1].weight  # (r, d), (6d, r)
    a1 = F.silu(c) @ shared.linear.weight.T + shared.linear.bias
    expect = a1 + F.silu(c) @ W_a.T @ W_b.T  # A^i = A^1 + W_b W_a (c + t), both through DiT's SiLU
    torch.testing.assert_close(torch.cat(vectors, dim=-1), expect)


def test_growing_in_time_keeps_what_each_learned_row_means():
    """An offset keeps its bias and a frame its embedding; beyond the trained range the edge row repeats."""
    from moviola.nn.window import resize_table

    offsets = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1)  # offsets -1, 0, +1 of a t = 2 window, (2t-1, 1, 1, C)
    grown = resize_table(offsets, (7, 1, 1), shrink="center").flatten().tolist()  # a t = 4 window: offsets -3..3
    assert grown == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0]
    frames = torch.tensor([5.0, 6.0]).view(2, 1, 1, 1)  # frame 0, frame 1 embeddings
    assert resize_table(frames, (4, 1, 1), shrink="first").flatten().tolist() == [5.0, 6.0, 6.0, 6.0]
    assert resize_table(frames, (1, 1, 1), shrink="first").flatten().tolist() == [5.0]
