"""Window attention (Swin; W.A.L.T): self-attention inside non-overlapping t×h×w windows of a
``(B, T, H, W, D)`` token grid, with a learned relative position bias, and identity attention for
the frames after the windowed ones (W.A.L.T's joint-training images in its spatiotemporal layers:
each attends to itself only, so its output is its value).

A window spanning the whole grid is full attention. Windows are reshapes around
``F.scaled_dot_product_attention`` (``attention.attention``); the bias is its additive mask.

The learned tables (the bias table here, absolute position tables in a model) are made for one
window or grid; ``resize_table`` / ``resize_relative_table`` interpolate them to another (the
paper's aspect-ratio fine-tune): bicubic over space (frames are resampled images), and over time
the table's own rows, kept where they were learned and padded with the edge rows when it grows
(a frame or an offset keeps its meaning; time is not resampled).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moviola.nn.attention import Attention

Window = tuple[int, int, int]  # (t, h, w) tokens


def window_partition(x: torch.Tensor, window: Window) -> torch.Tensor:
    """(B, T, H, W, D) -> (B·nW, wt·wh·ww, D): the tokens of each window, windows in (t, h, w) order."""
    B, T, H, W, D = x.shape
    wt, wh, ww = window
    x = x.view(B, T // wt, wt, H // wh, wh, W // ww, ww, D)  # (B, nt, wt, nh, wh, nw, ww, D)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, nt, nh, nw, wt, wh, ww, D)
    return x.reshape(-1, wt * wh * ww, D)  # (B·nW, L, D)


def window_merge(x: torch.Tensor, window: Window, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The inverse of ``window_partition``: (B·nW, L, D) -> (B, T, H, W, D) for ``shape`` = (B, T, H, W)."""
    B, T, H, W = shape
    wt, wh, ww = window
    D = x.shape[-1]
    x = x.view(B, T // wt, H // wh, W // ww, wt, wh, ww, D)  # (B, nt, nh, nw, wt, wh, ww, D)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, nt, wt, nh, wh, nw, ww, D)
    return x.reshape(B, T, H, W, D)


def check_window(window: Window, grid: tuple[int, int, int]) -> None:
    if len(window) != 3 or any(k < 1 or n % k for k, n in zip(window, grid)):
        raise ValueError(f"window {tuple(window)} does not divide the token grid {tuple(grid)}")


# built outside inference mode and cached, like the position tables of models/latte
@functools.lru_cache(maxsize=64)
def relative_index(window: Window) -> torch.Tensor:
    """(L, L) indices into a ((2wt-1)(2wh-1)(2ww-1),) table: the row of the offset (query - key)."""
    with torch.inference_mode(False):
        coords = torch.stack(torch.meshgrid(*(torch.arange(k) for k in window), indexing="ij"))  # (3, wt, wh, ww)
        coords = coords.flatten(1)  # (3, L)
        rel = coords[:, :, None] - coords[:, None, :]  # (3, L, L), offsets in [-(k-1), k-1]
        rel = rel + torch.tensor([k - 1 for k in window])[:, None, None]  # (3, L, L), in [0, 2k-2]
        _, sh, sw = (2 * k - 1 for k in window)
        return (rel[0] * sh + rel[1]) * sw + rel[2]  # (L, L)


def _resize_time(x: torch.Tensor, size: int, where: str) -> torch.Tensor:
    """x (C, T, ...) -> (C, size, ...) keeping every learned row's meaning: the ``first`` rows (an absolute
    table: frame i keeps its embedding; frames past the trained length repeat the last one) or the
    ``center`` rows (a table of offsets: offset k keeps its bias; offsets past the trained range take the
    largest trained one's, as clipped relative positions do). Never an interpolation, which would move
    what each learned row stands for."""
    n = x.shape[1]
    if size == n:
        return x
    if where == "first":
        if size < n:
            return x[:, :size]
        return torch.cat([x, x[:, -1:].expand(-1, size - n, *x.shape[2:])], dim=1)  # (C, size, ...)
    if size < n:
        start = (n - size) // 2
        return x[:, start:start + size]
    pad = (size - n) // 2  # both tables have odd lengths (2t - 1): the padding is even
    return torch.cat([x[:, :1].expand(-1, pad, *x.shape[2:]), x, x[:, -1:].expand(-1, pad, *x.shape[2:])], dim=1)


def _resize_space(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x (C, T, h, w) -> (C, T, *size), bicubic (as Swin and timm resize their tables)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    out = F.interpolate(x.transpose(0, 1).float(), size=size, mode="bicubic", align_corners=False)  # (T, C, h', w')
    return out.to(x.dtype).transpose(0, 1)  # (C, T, h', w')


def resize_table(table: torch.Tensor, size: tuple[int, int, int], shrink: str = "first") -> torch.Tensor:
    """A (t, h, w, C) table of learned vectors at another (t', h', w'): bicubic in space; in time the rows
    keep their meaning (``_resize_time``: ``shrink='first'`` for an absolute table, ``'center'`` for a
    table of offsets)."""
    x = table.permute(3, 0, 1, 2)  # (C, t, h, w)
    x = _resize_space(_resize_time(x, size[0], shrink), size[1:])  # (C, t', h', w')
    return x.permute(1, 2, 3, 0)  # (t', h', w', C)


def resize_relative_table(table: torch.Tensor, window: Window, new_window: Window) -> torch.Tensor:
    """A relative-bias table ((2wt-1)(2wh-1)(2ww-1), heads) for ``window``, resized for ``new_window``."""
    if tuple(window) == tuple(new_window):
        return table
    old = tuple(2 * k - 1 for k in window)
    new = tuple(2 * k - 1 for k in new_window)
    grid = table.view(*old, table.shape[-1])  # (2wt-1, 2wh-1, 2ww-1, heads)
    return resize_table(grid, new, shrink="center").reshape(math.prod(new), table.shape[-1])


class RelativePositionBias(nn.Module):
    """Swin's learned relative position bias for windows of ``window``: a table of one value per head for
    every offset (dt, dh, dw), ((2wt-1)(2wh-1)(2ww-1), heads), indexed by the offset of each query-key pair.
    At another window the table is interpolated (``resize_relative_table``)."""

    def __init__(self, window: Window, num_heads: int):
        super().__init__()
        self.window = tuple(window)
        size = math.prod(2 * k - 1 for k in window)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, window: Optional[Window] = None) -> torch.Tensor:
        """The bias (heads, L, L) of a window (default: the table's own)."""
        window = self.window if window is None else tuple(window)
        table = resize_relative_table(self.relative_position_bias_table, self.window, window)
        L = math.prod(window)
        index = relative_index(window).to(table.device)  # (L, L)
        return table[index.view(-1)].view(L, L, -1).permute(2, 0, 1)  # (heads, L, L)


def _mask_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype SDPA's queries will have: autocast's on an accelerator, else x's (on CPU attention()
    computes half precision in float32 and converts the mask itself)."""
    kind = x.device.type
    if kind != "cpu" and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class WindowAttention(Attention):
    """Multi-head self-attention inside non-overlapping windows of (B, T, H, W, D) tokens.

    The first ``num_windowed`` frames are cut into windows of ``window`` (default: the one the bias
    table was made for); the frames after them get an identity attention mask: each token attends to
    itself only, so its attention output is its value, projected (W.A.L.T's image frames in STW).
    The parameters are ``Attention``'s (qkv, proj, q_norm, k_norm) plus the bias table.
    """

    def __init__(self, dim: int, num_heads: int, window: Window, qkv_bias: bool = True, qk_norm: bool = False,
                 relative_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.window = tuple(window)
        self.relative_bias = RelativePositionBias(window, num_heads) if relative_bias else None

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The value projection alone (x (..., D) -> (..., D)): attention of a token to itself only."""
        D = x.shape[-1]
        bias = None if self.qkv.bias is None else self.qkv.bias[2 * D:]
        return F.linear(x, self.qkv.weight[2 * D:], bias)

    def forward(self, x: torch.Tensor, window: Optional[Window] = None,
                num_windowed: Optional[int] = None) -> torch.Tensor:
        B, T, H, W, D = x.shape
        window = self.window if window is None else tuple(window)
        tv = T if num_windowed is None else num_windowed
        check_window(window, (tv, H, W))
        tokens = window_partition(x[:, :tv], window)  # (B·nW, L, D)
        mask = None
        if self.relative_bias is not None:
            mask = self.relative_bias(window)[None].to(_mask_dtype(tokens))  # (1, heads, L, L)
        out = super().forward(tokens, attn_mask=mask)  # (B·nW, L, D)
        out = window_merge(out, window, (B, tv, H, W))  # (B, Tv, H, W, D)
        if tv == T:
            return out
        return torch.cat([out, self.proj(self.value(x[:, tv:]))], dim=1)  # (B, T, H, W, D)
