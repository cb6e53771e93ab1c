"""The pieces the Latte variants are built from: patch embeddings, the three kinds of transformer
block, and the final layer.

Every block takes its conditioning in one of three ways (``injection``):

- ``"adaln"``: adaLN-Zero (DiT; Latte's "S-AdaLN"). The block regresses shift, scale and gate
  vectors from the conditioning vector with its own ``adaLN_modulation`` layer.
- ``"adaln_single"``: PixArt-α's adaLN-single (Latte-1). The model regresses the vectors once
  from the timestep; each block only adds its learned ``scale_shift_table``.
- ``"tokens"``: no modulation. The timestep and class are extra tokens in the sequence, and the
  block is a plain pre-LN transformer block whose LayerNorms have their own affine parameters.

Tokens are 4-D, ``(B, T, N, D)`` (frames × patches), or ``(B, N, T, D)`` inside a temporal
block; a block that attends along one axis attends along dim -2.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.nn import Attention, CrossAttention, Mlp, apply_rope, modulate
from moviola.nn.attention import attention

Rope = Optional[tuple[torch.Tensor, torch.Tensor]]
Context = Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]  # text tokens (B, S, D), mask (B, S)


def _modulated(x: torch.Tensor, shift: Optional[torch.Tensor], scale: Optional[torch.Tensor]) -> torch.Tensor:
    return x if shift is None else modulate(x, shift, scale)


def _gated(gate: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return y if gate is None else gate * y


class Conditioned(nn.Module):
    """Mixin: the modulation parameters of a block, and turning conditioning into ``chunks`` vectors."""

    def _add_modulation(self, dim: int, chunks: int, injection: str) -> None:
        self.injection, self.chunks = injection, chunks
        if injection == "adaln":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))
        elif injection == "adaln_single":
            self.scale_shift_table = nn.Parameter(torch.randn(chunks, dim) / dim ** 0.5)  # as PixArt
        elif injection != "tokens":
            raise ValueError(f"unknown injection {injection!r}")

    def modulation(self, c: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        """``chunks`` vectors from c: the conditioning vector (adaln), the model's shared
        ``chunks·D`` projection (adaln_single), or nothing (tokens)."""
        if self.injection == "adaln":
            return self.adaLN_modulation(c).chunk(self.chunks, dim=-1)
        if self.injection == "adaln_single":
            table = self.scale_shift_table.to(c.dtype)
            return (table + c.unflatten(-1, (self.chunks, -1))).unbind(-2)  # (..., k, D) -> k × (..., D)
        return (None,) * self.chunks


def _norm(dim: int, injection: str) -> nn.LayerNorm:
    # modulated norms have no affine of their own: the conditioning supplies scale and shift
    return nn.LayerNorm(dim, elementwise_affine=injection == "tokens", eps=1e-6)


def _cross(block: nn.Module, x: torch.Tensor, context: Context) -> torch.Tensor:
    """x + cross-attention to the text; x (B, G, L, D). Queries are the un-normalized tokens, as PixArt."""
    if block.cross_attn is None or context is None:
        return x
    B, G, L, D = x.shape
    text, mask = context
    # every frame of a video attends to the same text, and softmax is per query: one call over G·L
    out = block.cross_attn(x.reshape(B, G * L, D), text, mask)  # (B, G·L, D)
    return x + out.view(B, G, L, D)


class LatteBlock(Conditioned):
    """A transformer block that attends along dim -2 of (B, G, L, D): a spatial block sees
    (B, T, N, D), a temporal one (B, N, T, D). ``context_dim`` adds cross-attention to text."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: str = "adaln", context_dim: Optional[int] = None):
        super().__init__()
        self.norm1 = _norm(dim, injection)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = _norm(dim, injection)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._add_modulation(dim, 6, injection)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, G, L, D); c: conditioning broadcastable to x, e.g. (B, G, 1, D) or (B, 1, L, D)
        B, G, L, D = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        h = _modulated(self.norm1(x), shift_msa, scale_msa).reshape(B * G, L, D)  # (B·G, L, D)
        x = x + _gated(gate_msa, self.attn(h, rope=rope).view(B, G, L, D))
        x = _cross(self, x, context)
        x = x + _gated(gate_mlp, self.mlp(_modulated(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FactorizedAttentionBlock(Conditioned):
    """Variant 3: one block, a spatial self-attention, then a temporal one, then the MLP.

    Works on (B, T, N, D). The temporal attention sees only the first ``num_video`` frames
    (the others are single images of joint training, which it leaves untouched).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: str = "adaln", context_dim: Optional[int] = None):
        super().__init__()
        self.norm1 = _norm(dim, injection)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm_temporal = _norm(dim, injection)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = _norm(dim, injection)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._add_modulation(dim, 9, injection)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], num_video: int, rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, T, N, D); c: (B, T, 1, D) per-frame conditioning
        B, T, N, D = x.shape
        (shift_s, scale_s, gate_s, shift_t, scale_t, gate_t,
         shift_mlp, scale_mlp, gate_mlp) = self.modulation(c)
        h = _modulated(self.norm1(x), shift_s, scale_s).reshape(B * T, N, D)  # (B·T, N, D)
        x = x + _gated(gate_s, self.attn(h).view(B, T, N, D))
        x = _cross(self, x, context)

        video, images = x[:, :num_video], x[:, num_video:]  # (B, Tv, N, D), (B, T-Tv, N, D)
        sl = slice(0, num_video)
        h = _modulated(self.norm_temporal(video), *(None if v is None else v[:, sl] for v in (shift_t, scale_t)))
        h = h.transpose(1, 2).reshape(B * N, num_video, D)  # (B·N, Tv, D)
        out = self.temporal_attn(h, rope=rope).view(B, N, num_video, D).transpose(1, 2)  # (B, Tv, N, D)
        video = video + _gated(None if gate_t is None else gate_t[:, sl], out)
        x = video if images.shape[1] == 0 else torch.cat([video, images], dim=1)  # (B, T, N, D)

        x = x + _gated(gate_mlp, self.mlp(_modulated(self.norm2(x), shift_mlp, scale_mlp)))
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


class FactorizedHeadsBlock(Conditioned):
    """Variant 4: a transformer block whose attention splits its heads between space and time."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 injection: str = "adaln", context_dim: Optional[int] = None, spatial_heads: Optional[int] = None):
        super().__init__()
        self.norm1 = _norm(dim, injection)
        self.attn = FactorizedHeadAttention(dim, num_heads, spatial_heads, qk_norm)
        self.norm2 = _norm(dim, injection)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._add_modulation(dim, 6, injection)
        self.cross_attn = CrossAttention(dim, context_dim, num_heads) if context_dim else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor], num_video: int, rope: Rope = None,
                context: Context = None) -> torch.Tensor:
        # x: (B, T, N, D); c: (B, T, 1, D) per-frame conditioning
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + _gated(gate_msa, self.attn(_modulated(self.norm1(x), shift_msa, scale_msa), num_video, rope))
        x = _cross(self, x, context)
        x = x + _gated(gate_mlp, self.mlp(_modulated(self.norm2(x), shift_mlp, scale_mlp)))
        return x


class FinalLayer(Conditioned):
    """Modulated LayerNorm, then a linear map from tokens to patches of output channels."""

    def __init__(self, dim: int, out_features: int, injection: str = "adaln"):
        super().__init__()
        self.norm_final = _norm(dim, injection)
        self.linear = nn.Linear(dim, out_features)
        self._add_modulation(dim, 2, injection)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # c: the conditioning vector (B, T, 1, D); adaln_single adds it, unprojected, to its table (2, D)
        if self.injection == "adaln_single":
            shift, scale = (self.scale_shift_table.to(c.dtype) + c.unsqueeze(-2)).unbind(-2)  # 2 × (B, T, 1, D)
        else:
            shift, scale = self.modulation(c)
        return self.linear(_modulated(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    """Per-frame non-overlapping p×p patches -> tokens (a strided Conv2d, ``x_embedder.proj``)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)
        tok = self.proj(frames)  # (B·T, D, h, w)
        D, h, w = tok.shape[1:]
        return tok.flatten(2).transpose(1, 2).reshape(B, T, h * w, D)  # (B, T, N, D)


class TubeletEmbed(nn.Module):
    """s×p×p tubelets -> tokens (ViViT's tubelet / Latte's "compression frame" embedding, a strided Conv3d)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, tubelet_size: int):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tok = self.proj(x)  # (B, D, T/s, h, w)
        return tok.flatten(3).permute(0, 2, 3, 1)  # (B, T/s, N, D)
