"""W.A.L.T's layers and blocks. Tokens are a grid ``(B, T, H, W, D)``.

A *layer* is one window self-attention (spatial window SW, 1×h'×w', or spatiotemporal window STW,
t×h'×w'), then attention to the text (optional), then an MLP; the attention and the MLP are
adaLN-modulated (shift, scale, gate: the six vectors of A^i) and the text attention is not. A
*block* is an SW layer followed by an STW layer, so the layers alternate SW, STW, SW, ...
(``model.depth`` counts layers: docs/walt.md).

In an STW layer the frames after the first ``num_video`` (joint-training images) attend to
themselves only (an identity attention mask) and skip the text attention; every layer's MLP sees them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.nn import ConcatKVAttention, CrossAttention, Mlp, WindowAttention
from moviola.nn.modulation import Modulation, gated, modulated, modulation
from moviola.nn.transformer import ModulatedBlock
from moviola.nn.window import Window, window_merge, window_partition

Text = Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]  # projected text (B, S, D) and its mask (B, S)
TEXT_ATTENTIONS = ("concat_kv", "cross")


class WaltLayer(ModulatedBlock):
    """Window self-attention, optional text attention (``text``: concat_kv or cross), MLP."""

    def __init__(self, dim: int, num_heads: int, window: Window, mlp_ratio: float = 4.0, qk_norm: bool = True,
                 relative_bias: bool = True, injection: "str | Modulation" = "adaln", text: Optional[str] = None):
        super().__init__()
        mod = modulation(injection)
        self.norm1 = mod.norm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias=True, qk_norm=qk_norm,
                                    relative_bias=relative_bias)
        if text is not None and text not in TEXT_ATTENTIONS:
            raise ValueError(f"text attention must be one of {TEXT_ATTENTIONS}, got {text!r}")
        self.text_attention = text
        self.norm_text = nn.LayerNorm(dim, eps=1e-6) if text else None
        if text == "concat_kv":
            self.text_attn = ConcatKVAttention(dim, num_heads, qk_norm=qk_norm)
        else:
            self.text_attn = CrossAttention(dim, dim, num_heads) if text else None
        self.norm2 = mod.norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulate_with(mod, dim, 6)  # shift, scale, gate for the attention and for the MLP

    def forward(self, x: torch.Tensor, c, window: Window, num_windowed: int, text: Text = None) -> torch.Tensor:
        # x: (B, T, H, W, D); c: per-frame conditioning (B, T, 1, 1, D), or a LoRACondition of such tensors
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.vectors(c)
        h = modulated(self.norm1(x), shift_msa, scale_msa)  # (B, T, H, W, D)
        x = x + gated(gate_msa, self.attn(h, window, num_windowed))
        x = self.attend_text(x, window, num_windowed, text)
        return x + gated(gate_mlp, self.mlp(modulated(self.norm2(x), shift_mlp, scale_mlp)))

    def attend_text(self, x: torch.Tensor, window: Window, num_windowed: int, text: Text) -> torch.Tensor:
        """x + attention to the text, for the windowed frames; concat_kv attends window by window."""
        if self.text_attn is None or text is None:
            return x
        tokens, mask = text
        B, T, H, W, D = x.shape
        tv = num_windowed
        h = self.norm_text(x[:, :tv])  # (B, Tv, H, W, D)
        if self.text_attention == "concat_kv":
            groups = window_partition(h, window)  # (B·nW, L, D)
            L = groups.shape[1]
            out = self.text_attn(groups.view(B, -1, L, D), tokens, mask)  # (B, nW, L, D)
            out = window_merge(out.reshape(-1, L, D), window, (B, tv, H, W))  # (B, Tv, H, W, D)
        else:
            out = self.text_attn(h.reshape(B, tv * H * W, D), tokens, mask).view(B, tv, H, W, D)  # (B, Tv, H, W, D)
        if tv == T:
            return x + out
        return torch.cat([x[:, :tv] + out, x[:, tv:]], dim=1)  # (B, T, H, W, D)


class WaltBlock(nn.Module):
    """A spatial-window layer (``spatial``), then a spatiotemporal-window layer (``spatiotemporal``)."""

    def __init__(self, dim: int, num_heads: int, windows: tuple[Window, Window], mlp_ratio: float, qk_norm: bool,
                 relative_bias: bool, injections: tuple, text: Optional[str], text_in_stw: bool):
        super().__init__()
        common = dict(mlp_ratio=mlp_ratio, qk_norm=qk_norm, relative_bias=relative_bias)
        self.spatial = WaltLayer(dim, num_heads, windows[0], injection=injections[0], text=text, **common)
        self.spatiotemporal = WaltLayer(dim, num_heads, windows[1], injection=injections[1],
                                        text=text if text_in_stw else None, **common)

    def forward(self, x: torch.Tensor, c, windows: tuple[Window, Window], num_video: int,
                text: Text = None) -> torch.Tensor:
        # x: (B, T, H, W, D): every frame in the SW layer, the first num_video frames windowed in the STW layer
        x = self.spatial(x, c, windows[0], x.shape[1], text)
        return self.spatiotemporal(x, c, windows[1], num_video, text)
