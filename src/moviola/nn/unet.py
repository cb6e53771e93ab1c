"""The image latent-diffusion U-Net of Stable Diffusion 1.x/2.x: the spatial backbone of Video LDM and
VideoCrafter.

Layout (every parameter carries the name diffusers' ``UNet2DConditionModel`` gives it, so its state dict
loads with ``strict=True`` and no renaming)::

    conv_in -> down_blocks[0..n-1] -> mid_block -> up_blocks[0..n-1] -> conv_norm_out, SiLU -> conv_out
    time_proj (sinusoidal, no weights) -> time_embedding.linear_1, act, linear_2 -> every resnet

A level is a block named by a string (``BLOCKS``, built through ``make_block``, so a variant is data):
``resnets`` (GroupNorm-SiLU-conv residual blocks that add the time embedding), in the attention blocks a
spatial transformer after each resnet (``attentions``: GroupNorm, ``proj_in``, transformer blocks of
self-attention, cross-attention to the text and a GEGLU feed-forward, ``proj_out``, plus the input),
then a stride-2 convolution (``downsamplers``) or a nearest ×2 upsampling and convolution
(``upsamplers``). Every down-path activation after a resnet or transformer, and after each downsampler,
is a skip connection; each up resnet takes the next one concatenated along channels. The upsampling
output takes the skip connection's spatial size, so odd latent sizes come back to their size.

``attention_head_dim`` is, as in diffusers for SD, the NUMBER of heads when ``num_attention_heads`` is
None (a historical misnomer diffusers keeps): SD 1.x has 8 heads everywhere, SD 2.x ``(5, 10, 20, 20)``
(64 channels each).

The temporal hook: ``temporal(kind, channels, path)`` is called while building, once per slot in
forward order: ``"input"`` after conv_in (stored as ``transformer_in``), ``"resnet"`` after each resnet
(the block's ``temp_convs[i]``, the resnet's index) and ``"attention"`` after each spatial transformer
(``temp_attentions[i]``); the mid block has both lists too. These are the names of diffusers'
``UNet3DConditionModel``. A returned module runs as ``h = module(h, video)`` on the frames (N, C, H, W)
and owns its residual or blend; ``video`` is forward's opaque argument, passed through unchanged. When the
hook returns None the slot holds a parameter-free placeholder that is never called, so the plain image
U-Net's state dict equals diffusers' exactly.

Image cross-attention (VideoCrafter1's image-to-video, Eq. 7): with ``image_cross_attention=True`` every
cross-attention (``attn2``) also attends to image tokens with the same query and its own key/value
projections ``to_k_ip``/``to_v_ip`` (VideoCrafter's names), and adds the result scaled:
``softmax(Q K_textᵀ) V_text + scale · softmax(Q K_imgᵀ) V_img``, then ``to_out``. With
``image_cross_attention_scale_learnable`` the scale is gated per layer by DynamiCrafter's
``scale · (tanh(alpha) + 1)``, ``alpha`` a scalar parameter starting at 0 (so the gate starts at ``scale``).
Text and image tokens arrive separately (``forward(..., context, image_context=...)``): nothing is
concatenated and split at a fixed text length as the official code does at 77. Without the switch no
``*_ip``/``alpha`` parameter exists and everything is as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from moviola.nn.attention import attention

TemporalFactory = Callable[[str, int, str], Optional[nn.Module]]
IntOrLevels = Union[int, Sequence[int]]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "swish": F.silu, "mish": F.mish, "gelu": F.gelu, "relu": F.relu}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"act_fn: unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------- the temporal hook's slots
class _NoTemporal(nn.Module):
    """An empty temporal slot: keeps the indices of ``temp_convs``/``temp_attentions`` aligned with the
    resnets and transformers; has no parameters and is never called."""


def _temporal_slot(temporal: Optional[TemporalFactory], kind: str, channels: int, path: str) -> nn.Module:
    module = None if temporal is None else temporal(kind, channels, path)
    if module is None:
        return _NoTemporal()
    if not isinstance(module, nn.Module):
        raise TypeError(f"the temporal factory returned {type(module).__name__} for {path}; "
                        "expected an nn.Module or None")
    return module


def _run_temporal(module: nn.Module, h: torch.Tensor, video: Any) -> torch.Tensor:
    return h if isinstance(module, _NoTemporal) else module(h, video)


# ---------------------------------------------------------------- layers
def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                      max_period: float = 10000.0) -> torch.Tensor:
    """diffusers' ``Timesteps``: ``[sin, cos]`` (``[cos, sin]`` when flipped) of t · max_period^(-i/(half −
    shift)), float32. t: (N,) -> (N, dim)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]  # (N, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int, act_fn: str = "silu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.act = _activation(act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm → act → conv → + time embedding → GroupNorm → act → conv, plus the input (1×1-projected
    when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 act_fn: str = "silu"):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.act = _activation(act_fn)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.time_emb_proj(self.act(temb))[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


@dataclass(frozen=True)
class ImageCrossAttention:
    """How a cross-attention also hears image tokens: its fixed ``scale``, and whether a learned per-layer
    gate ``tanh(alpha) + 1`` multiplies it (DynamiCrafter's ``image_cross_attention_scale_learnable``)."""

    scale: float = 1.0
    learnable: bool = False


class UNetAttention(nn.Module):
    """Multi-head attention with diffusers' names: bias-free ``to_q/to_k/to_v``, ``to_out.0``. Keys and
    values come from ``context`` (cross-attention) or from x (self-attention).

    ``image_attention`` (cross-attention only) adds bias-free ``to_k_ip``/``to_v_ip`` (context_dim -> dim) and,
    when learnable, the scalar ``alpha``: ``forward(x, context, mask, image_context)`` then returns
    ``to_out(attn(q, k, v; mask) + gate · attn(q, k_ip, v_ip))`` with the query shared and the text mask on the
    text part only; ``gate = scale`` or ``scale · (tanh(alpha) + 1)``. All-zero image tokens (the null
    condition) contribute exactly nothing, as the projections have no bias."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None,
                 image_attention: Optional[ImageCrossAttention] = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers' to_out.1 is a parameter-free dropout
        self.image_attention = image_attention
        if image_attention is not None:
            if context_dim is None:
                raise ValueError("image cross-attention needs a cross-attention layer (context_dim), "
                                 "not a self-attention")
            self.to_k_ip = nn.Linear(context_dim, dim, bias=False)
            self.to_v_ip = nn.Linear(context_dim, dim, bias=False)
            self.alpha = nn.Parameter(torch.tensor(0.0)) if image_attention.learnable else None
        else:
            self.to_k_ip = self.to_v_ip = self.alpha = None

    def image_gate(self) -> Union[float, torch.Tensor]:
        """The factor of the image attention: ``scale``, or ``scale · (tanh(alpha) + 1)`` when learnable."""
        if self.image_attention is None:
            raise ValueError("this attention has no image cross-attention")
        if self.alpha is None:
            return self.image_attention.scale
        return self.image_attention.scale * (torch.tanh(self.alpha) + 1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L, D = x.shape
        source = x if context is None else context

        def split(y: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (B, heads, S, D/heads)
            return y.view(B, y.shape[1], self.heads, D // self.heads).transpose(1, 2)

        q = split(self.to_q(x))
        out = attention(q, split(self.to_k(source)), split(self.to_v(source)), mask)
        if self.image_attention is not None:
            if image_context is None:
                raise ValueError("this attention cross-attends to image tokens: pass image_context (B, M, context_dim)")
            image = attention(q, split(self.to_k_ip(image_context)), split(self.to_v_ip(image_context)))
            out = out + self.image_gate() * image
        elif image_context is not None:
            raise ValueError("image_context given, but this attention has no image cross-attention (to_k_ip/to_v_ip)")
        return self.to_out[0](out.transpose(1, 2).reshape(B, L, D))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4·dim, then back (diffusers' ``ff.net.0.proj``, ``ff.net.2``; ``net.1`` is a dropout)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention (absent without ``cross_attention_dim``; also to image
    tokens with ``image_attention``), feed-forward."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: Optional[int],
                 image_attention: Optional[ImageCrossAttention] = None):
        super().__init__()
        if image_attention is not None and cross_attention_dim is None:
            raise ValueError("image cross-attention needs cross_attention_dim (the image tokens' width)")
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = UNetAttention(dim, heads)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = UNetAttention(dim, heads, cross_attention_dim, image_attention)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, mask, image_context)
        elif image_context is not None:
            raise ValueError("image_context given, but this transformer block has no cross-attention")
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """The spatial transformer: GroupNorm, ``proj_in`` (1×1 conv, or linear on the tokens for SD 2.x),
    transformer blocks over the H·W tokens, ``proj_out``, plus the input."""

    def __init__(self, channels: int, heads: int, num_layers: int, cross_attention_dim: Optional[int],
                 groups: int, use_linear_projection: bool = False,
                 image_attention: Optional[ImageCrossAttention] = None):
        super().__init__()
        self.linear = use_linear_projection
        proj = (lambda: nn.Linear(channels, channels)) if self.linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, cross_attention_dim, image_attention) for _ in range(num_layers))
        self.proj_out = proj()

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        N, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(N, H * W, C)  # (N, H·W, C)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, mask, image_context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(N, H, W, C).permute(0, 3, 1, 2)  # (N, C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return x + h


class Downsample2D(nn.Module):
    """A stride-2 3×3 convolution; ``padding=0`` pads right and bottom by one first (diffusers' rule)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class Upsample2D(nn.Module):
    """Nearest-neighbour ×2 (or to ``size``), then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


# ---------------------------------------------------------------- blocks (one U-Net level each)
@dataclass(frozen=True)
class BlockOptions:
    """What every block of a U-Net shares, with the level's heads and transformer depth."""

    temb_channels: int
    groups: int = 32
    eps: float = 1e-5
    act_fn: str = "silu"
    heads: int = 8
    transformer_layers: int = 1
    cross_attention_dim: Optional[int] = None
    use_linear_projection: bool = False
    downsample_padding: int = 1
    image_attention: Optional[ImageCrossAttention] = None  # cross-attention also to image tokens


class _Level(nn.Module):
    """Resnets, the first ``num_attentions`` each followed by a spatial transformer, and their temporal slots:
    resnet i → temp_convs[i] → attentions[i] → temp_attentions[i]."""

    kind = ""  # "down", "mid" or "up"
    has_attention = False

    def _build(self, in_channels: Sequence[int], out_channels: int, num_attentions: int, o: BlockOptions,
               temporal: Optional[TemporalFactory], path: str) -> None:
        self.resnets, self.temp_convs = nn.ModuleList(), nn.ModuleList()
        self.attentions = nn.ModuleList() if num_attentions else None
        self.temp_attentions = nn.ModuleList() if num_attentions else None
        for i, c in enumerate(in_channels):
            self.resnets.append(ResnetBlock2D(c, out_channels, o.temb_channels, o.groups, o.eps, o.act_fn))
            self.temp_convs.append(_temporal_slot(temporal, "resnet", out_channels, f"{path}.temp_convs.{i}"))
            if i < num_attentions:
                self.attentions.append(Transformer2D(out_channels, o.heads, o.transformer_layers,
                                                     o.cross_attention_dim, o.groups, o.use_linear_projection,
                                                     o.image_attention))
                self.temp_attentions.append(
                    _temporal_slot(temporal, "attention", out_channels, f"{path}.temp_attentions.{i}"))

    def _layer(self, i: int, h: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor],
               mask: Optional[torch.Tensor], video: Any, image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = _run_temporal(self.temp_convs[i], self.resnets[i](h, temb), video)
        if self.attentions is not None and i < len(self.attentions):
            h = _run_temporal(self.temp_attentions[i], self.attentions[i](h, context, mask, image_context), video)
        return h


class _DownBlock(_Level):
    kind = "down"

    def __init__(self, *, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 options: BlockOptions, temporal: Optional[TemporalFactory] = None, path: str = "down_block"):
        super().__init__()
        ins = [in_channels] + [out_channels] * (num_layers - 1)
        self._build(ins, out_channels, num_layers if self.has_attention else 0, options, temporal, path)
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, options.downsample_padding)])
                             if add_downsample else None)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, video: Any = None,
                image_context: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (h, the skip connections this level leaves for the up path)."""
        skips = []
        for i in range(len(self.resnets)):
            h = self._layer(i, h, temb, context, mask, video, image_context)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class _UpBlock(_Level):
    kind = "up"

    def __init__(self, *, in_channels: int, prev_channels: int, out_channels: int, num_layers: int,
                 add_upsample: bool, options: BlockOptions, temporal: Optional[TemporalFactory] = None,
                 path: str = "up_block"):
        super().__init__()
        # resnet i sees h (prev_channels, then out_channels) concatenated with a skip connection: the last
        # one is the lower level's downsampler output (in_channels), the others this level's (out_channels)
        ins = [(prev_channels if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels)
               for i in range(num_layers)]
        self._build(ins, out_channels, num_layers if self.has_attention else 0, options, temporal, path)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, h: torch.Tensor, skips: Sequence[torch.Tensor], temb: torch.Tensor,
                context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None, video: Any = None,
                upsample_size: Optional[Sequence[int]] = None,
                image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``skips``: this level's skip connections, the last one is used first."""
        skips = list(skips)
        for i in range(len(self.resnets)):
            h = self._layer(i, torch.cat([h, skips.pop()], dim=1), temb, context, mask, video, image_context)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


class _MidBlock(_Level):
    kind = "mid"

    def __init__(self, *, channels: int, options: BlockOptions, temporal: Optional[TemporalFactory] = None,
                 path: str = "mid_block"):
        super().__init__()
        resnets = 2 if self.has_attention else 1
        self._build([channels] * resnets, channels, resnets - 1, options, temporal, path)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, video: Any = None,
                image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i in range(len(self.resnets)):
            h = self._layer(i, h, temb, context, mask, video, image_context)
        return h


class DownBlock2D(_DownBlock):
    pass


class CrossAttnDownBlock2D(_DownBlock):
    has_attention = True


class UpBlock2D(_UpBlock):
    pass


class CrossAttnUpBlock2D(_UpBlock):
    has_attention = True


class UNetMidBlock2D(_MidBlock):
    """One resnet (diffusers' ``mid_block_type="UNetMidBlock2D"`` as UNet2DConditionModel builds it)."""


class UNetMidBlock2DCrossAttn(_MidBlock):
    """resnet → spatial transformer → resnet."""

    has_attention = True


BLOCKS: dict[str, type[_Level]] = {cls.__name__: cls for cls in (
    CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UNetMidBlock2D, CrossAttnUpBlock2D, UpBlock2D)}


def block_class(type_name: str, kind: Optional[str] = None, argument: str = "block type") -> type[_Level]:
    """The class registered as ``type_name`` (of ``kind`` "down", "mid" or "up" if given)."""
    if type_name not in BLOCKS:
        raise ValueError(f"{argument}: unknown block type {type_name!r}; known: {sorted(BLOCKS)}")
    cls = BLOCKS[type_name]
    if kind is not None and cls.kind != kind:
        raise ValueError(f"{argument}: {type_name!r} is a {cls.kind} block, not a {kind} block")
    return cls


def make_block(type_name: str, **kw: Any) -> nn.Module:
    """Build the block registered as ``type_name``: down blocks take in_channels, out_channels, num_layers,
    add_downsample; up blocks in_channels, prev_channels, out_channels, num_layers, add_upsample; mid blocks
    channels; all take options (BlockOptions), temporal and path."""
    return block_class(type_name)(**kw)


# ---------------------------------------------------------------- the U-Net
SD15_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def _per_level(value: Any, levels: int, name: str) -> tuple:
    values = (value,) * levels if isinstance(value, int) else tuple(value)
    if len(values) != levels:
        raise ValueError(f"{name} has {len(values)} entries for {levels} levels (block_out_channels): {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or one positive int per level, got {value!r}")
    return values


class UNet2D(nn.Module):
    """Stable Diffusion's U-Net: ``model(x (N, C, H, W), t (N,) or scalar, context (N, L, D), ...) -> (N,
    out_channels, H, W)``. Arguments are diffusers' ``UNet2DConditionModel``'s (names and defaults), except
    ``cross_attention_dim`` (768, SD 1.x's; None: no cross-attention), ``temporal`` and the image
    cross-attention (the module docstring): ``image_cross_attention`` (every ``attn2`` also attends to
    ``forward``'s ``image_context``), ``image_cross_attention_scale`` (the image term's factor) and
    ``image_cross_attention_scale_learnable`` (DynamiCrafter's per-layer gate ``tanh(alpha) + 1`` on it)."""

    def __init__(self, *, in_channels: int = 4, out_channels: int = 4,
                 block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
                 down_block_types: Sequence[str] = SD15_DOWN, up_block_types: Sequence[str] = SD15_UP,
                 mid_block_type: Optional[str] = "UNetMidBlock2DCrossAttn", layers_per_block: IntOrLevels = 2,
                 attention_head_dim: IntOrLevels = 8, num_attention_heads: Optional[IntOrLevels] = None,
                 cross_attention_dim: Optional[int] = 768, norm_num_groups: int = 32, norm_eps: float = 1e-5,
                 transformer_layers_per_block: IntOrLevels = 1, use_linear_projection: bool = False,
                 flip_sin_to_cos: bool = True, freq_shift: float = 0, act_fn: str = "silu",
                 downsample_padding: int = 1, temporal: Optional[TemporalFactory] = None,
                 image_cross_attention: bool = False, image_cross_attention_scale: float = 1.0,
                 image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        image_attention = self._check_image_attention(image_cross_attention, image_cross_attention_scale,
                                                      image_cross_attention_scale_learnable, cross_attention_dim)
        channels = tuple(block_out_channels)
        n = len(channels)
        layers, heads, depth = self._check(
            in_channels, out_channels, channels, tuple(down_block_types), tuple(up_block_types), mid_block_type,
            layers_per_block, attention_head_dim, num_attention_heads, cross_attention_dim, norm_num_groups,
            transformer_layers_per_block, act_fn, downsample_padding)
        self.block_out_channels, self.flip_sin_to_cos, self.freq_shift = channels, flip_sin_to_cos, freq_shift
        self.cross_attention_dim = cross_attention_dim
        self.image_cross_attention = image_attention is not None
        self.act = _activation(act_fn)
        base = BlockOptions(temb_channels=4 * channels[0], groups=norm_num_groups, eps=norm_eps, act_fn=act_fn,
                            cross_attention_dim=cross_attention_dim, use_linear_projection=use_linear_projection,
                            downsample_padding=downsample_padding, image_attention=image_attention)

        def options(level: int) -> BlockOptions:
            return replace(base, heads=heads[level], transformer_layers=depth[level])

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], 4 * channels[0], act_fn)
        slot = _temporal_slot(temporal, "input", channels[0], "transformer_in")
        self.transformer_in = None if isinstance(slot, _NoTemporal) else slot
        self.down_blocks = nn.ModuleList(
            make_block(name, in_channels=channels[max(i - 1, 0)], out_channels=channels[i], num_layers=layers[i],
                       add_downsample=i < n - 1, options=options(i), temporal=temporal, path=f"down_blocks.{i}")
            for i, name in enumerate(down_block_types))
        self.mid_block = None if mid_block_type is None else make_block(
            mid_block_type, channels=channels[-1], options=options(n - 1), temporal=temporal, path="mid_block")
        self.up_blocks = nn.ModuleList()
        for i, name in enumerate(up_block_types):
            level = n - 1 - i  # up block i works at the resolution of down level n-1-i
            self.up_blocks.append(make_block(
                name, in_channels=channels[max(level - 1, 0)], prev_channels=channels[min(level + 1, n - 1)],
                out_channels=channels[level], num_layers=layers[level] + 1, add_upsample=i < n - 1,
                options=options(level), temporal=temporal, path=f"up_blocks.{i}"))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        self.has_cross_attention = cross_attention_dim is not None and any(
            m.attn2 is not None for m in self.modules() if isinstance(m, BasicTransformerBlock))
        if self.image_cross_attention and not self.has_cross_attention:
            raise ValueError("image_cross_attention=True, but no block of this U-Net has a spatial transformer "
                             "(cross-attention) to add it to")

    @staticmethod
    def _check_image_attention(enabled, scale, learnable, cross_attention_dim) -> Optional[ImageCrossAttention]:
        if not isinstance(enabled, bool):
            raise ValueError(f"image_cross_attention must be a bool, got {enabled!r}")
        if not isinstance(learnable, bool):
            raise ValueError(f"image_cross_attention_scale_learnable must be a bool, got {learnable!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"image_cross_attention_scale must be a finite number, got {scale!r}")
        if not enabled:
            if learnable or scale != 1.0:
                raise ValueError("image_cross_attention_scale"
                                 + ("_learnable" if learnable else f"={scale!r}")
                                 + " given without image_cross_attention=True")
            return None
        if cross_attention_dim is None:
            raise ValueError("image_cross_attention=True needs cross_attention_dim (the width of the image tokens, "
                             "as of the text's)")
        return ImageCrossAttention(float(scale), learnable)

    @staticmethod
    def _check(in_channels, out_channels, channels, down, up, mid, layers_per_block, attention_head_dim,
               num_attention_heads, cross_attention_dim, groups, transformer_layers, act_fn, downsample_padding):
        """Every argument checked before anything is built -> (layers, heads, transformer depth) per level."""
        n = len(channels)
        if n == 0 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"block_out_channels must be positive channel counts, got {channels!r}")
        for name, types in (("down_block_types", down), ("up_block_types", up)):
            if len(types) != n:
                raise ValueError(f"{name} has {len(types)} entries but block_out_channels has {n}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"norm_num_groups must be a positive int, got {groups!r}")
        for c in channels:
            if c % groups:
                raise ValueError(f"block_out_channels: {c} channels are not divisible by norm_num_groups={groups}")
        if cross_attention_dim is not None and (not isinstance(cross_attention_dim, int) or cross_attention_dim < 1):
            raise ValueError(f"cross_attention_dim must be a positive int or None, got {cross_attention_dim!r}")
        if not isinstance(downsample_padding, int) or downsample_padding < 0:
            raise ValueError(f"downsample_padding must be an int >= 0, got {downsample_padding!r}")
        _activation(act_fn)
        attends = [block_class(d, "down", "down_block_types").has_attention
                   or block_class(u, "up", "up_block_types").has_attention for d, u in zip(down, reversed(up))]
        if mid is not None:
            attends[-1] = attends[-1] or block_class(mid, "mid", "mid_block_type").has_attention
        heads_name = "attention_head_dim" if num_attention_heads is None else "num_attention_heads"
        heads = _per_level(attention_head_dim if num_attention_heads is None else num_attention_heads, n, heads_name)
        for c, h, used in zip(channels, heads, attends):
            if used and c % h:
                raise ValueError(f"{heads_name}: {c} channels do not split into {h} heads"
                                 + (" (diffusers' attention_head_dim is the number of heads)"
                                    if num_attention_heads is None else ""))
        return (_per_level(layers_per_block, n, "layers_per_block"), heads,
                _per_level(transformer_layers, n, "transformer_layers_per_block"))

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    # ------------------------------------------------------------------ diffusers configs
    @classmethod
    def from_diffusers_config(cls, config: dict, **kw: Any) -> "UNet2D":
        """Build from a diffusers ``UNet2DConditionModel`` config.json dict; ``kw`` (e.g. ``temporal``) is
        passed on. Keys whose value changes what diffusers builds and that this U-Net does not implement are
        refused by name."""
        refused = [f"{k}={v!r} (supported: {_ONLY_DEFAULT[k]!r})" for k, v in config.items()
                   if k in _ONLY_DEFAULT and not _is_default(k, v)]
        unknown = [k for k in config if not k.startswith("_") and k not in _MAPPED
                   and k not in _IGNORED and k not in _ONLY_DEFAULT]
        refused += [f"{k} (unknown key)" for k in unknown]
        if refused:
            raise ValueError(f"unsupported diffusers UNet2DConditionModel config: {', '.join(refused)}")
        args = dict(_DIFFUSERS_DEFAULTS)
        args.update({k: v for k, v in config.items() if k in _MAPPED})
        cad = args["cross_attention_dim"]
        if isinstance(cad, (list, tuple)):
            if len(set(cad)) != 1:
                raise ValueError(f"unsupported diffusers UNet2DConditionModel config: cross_attention_dim={cad!r} "
                                 "(one width per level is not supported)")
            args["cross_attention_dim"] = cad[0]
        return cls(**args, **kw)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, int, float], context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, emb: Optional[torch.Tensor] = None,
                video: Any = None, image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (N, C, H, W); t (N,) or a scalar; context (N, L, cross_attention_dim) text tokens; context_mask
        (N, L), True = a real token (a row with none attends to all, as diffusers' -10000 bias does); emb
        (N, time_embed_dim) added to the time embedding; video: passed to every temporal module;
        image_context (N, M, cross_attention_dim) image tokens (e.g. a Resampler's), required with
        image_cross_attention and refused without (for frames, repeat them per frame as the text)."""
        temb = self.time_embedding(self._timestep_features(t, x))  # (N, E)
        if emb is not None:
            if emb.shape != temb.shape:
                raise ValueError(f"emb must have shape (N, time_embed_dim) = {tuple(temb.shape)}, "
                                 f"got {tuple(emb.shape)}")
            temb = temb + emb
        context, mask = self._context(x, context, context_mask)
        # passed only when given, so a block that knows nothing of image tokens keeps working without them
        image = {} if image_context is None else {"image_context": self._image_context(x, image_context)}
        if self.image_cross_attention and not image:
            raise ValueError("this U-Net cross-attends to image tokens (image_cross_attention=True): pass "
                             f"image_context (N, M, cross_attention_dim={self.cross_attention_dim})")
        h = self.conv_in(x)
        if self.transformer_in is not None:
            h = self.transformer_in(h, video)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context, mask, video, **image)
            skips += block_skips
        if self.mid_block is not None:
            h = self.mid_block(h, temb, context, mask, video, **image)
        for block in self.up_blocks:
            k = len(block.resnets)
            skips, block_skips = skips[:-k], skips[-k:]
            size = skips[-1].shape[-2:] if block.upsamplers is not None else None  # the next skip's size
            h = block(h, block_skips, temb, context, mask, video, size, **image)
        return self.conv_out(self.act(self.conv_norm_out(h)))

    def _timestep_features(self, t: Union[torch.Tensor, int, float], x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(N)
        if t.shape != (N,):
            raise ValueError(f"t must be a scalar or have shape (N,) = ({N},), got {tuple(t.shape)}")
        return timestep_features(t, self.block_out_channels[0], self.flip_sin_to_cos, self.freq_shift).to(x.dtype)

    def _context(self, x: torch.Tensor, context: Optional[torch.Tensor], context_mask: Optional[torch.Tensor]):
        """-> (context, attention mask (N, 1, 1, L) bool or None), checked."""
        if context is None:
            if self.has_cross_attention:
                raise ValueError(f"this U-Net cross-attends to text (cross_attention_dim={self.cross_attention_dim}):"
                                 " pass context (N, L, cross_attention_dim)")
            if context_mask is not None:
                raise ValueError("context_mask given without context")
            return None, None
        if self.cross_attention_dim is None:
            raise ValueError("context given, but this U-Net has no cross-attention (cross_attention_dim=None)")
        N = x.shape[0]
        if context.dim() != 3 or context.shape[0] != N or context.shape[2] != self.cross_attention_dim:
            raise ValueError(f"context must have shape (N, L, cross_attention_dim) = ({N}, L, "
                             f"{self.cross_attention_dim}), got {tuple(context.shape)}")
        if context_mask is None:
            return context.to(x.dtype), None
        if context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must have shape (N, L) = {tuple(context.shape[:2])}, "
                             f"got {tuple(context_mask.shape)}")
        keep = context_mask.to(torch.bool)
        keep = keep | ~keep.any(dim=-1, keepdim=True)  # no real token: attend to all (never NaN)
        return context.to(x.dtype), keep[:, None, None, :]

    def _image_context(self, x: torch.Tensor, image_context: torch.Tensor) -> torch.Tensor:
        if not self.image_cross_attention:
            raise ValueError("image_context given, but this U-Net has no image cross-attention "
                             "(image_cross_attention=False)")
        N = x.shape[0]
        if (image_context.dim() != 3 or image_context.shape[0] != N or image_context.shape[1] < 1
                or image_context.shape[2] != self.cross_attention_dim):
            raise ValueError(f"image_context must have shape (N, M, cross_attention_dim) = ({N}, M >= 1, "
                             f"{self.cross_attention_dim}), got {tuple(image_context.shape)}")
        return image_context.to(x.dtype)


# ---------------------------------------------------------------- diffusers config keys (diffusers 0.42.1)
_MAPPED = ("in_channels", "out_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
           "up_block_types", "block_out_channels", "layers_per_block", "downsample_padding", "act_fn",
           "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
           "attention_head_dim", "num_attention_heads", "use_linear_projection")
# diffusers' defaults where ours differ (a config.json may leave a key out)
_DIFFUSERS_DEFAULTS: dict[str, Any] = {"cross_attention_dim": 1280}
# bookkeeping, or without effect here: upcast_attention changes precision only (attention runs in float32 on
# CPU anyway); addition_embed_type_num_heads matters only with addition_embed_type, which is refused
_IGNORED = ("sample_size", "upcast_attention", "addition_embed_type_num_heads")
# keys implemented only at diffusers' default value (the block-specific ones too, conservatively)
_ONLY_DEFAULT: dict[str, Any] = {
    "center_input_sample": False, "only_cross_attention": False, "mid_block_scale_factor": 1.0, "dropout": 0.0,
    "dual_cross_attention": False, "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "attention_type": "default", "class_embeddings_concat": False, "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
}


def _is_default(key: str, value: Any) -> bool:
    if key == "only_cross_attention" and isinstance(value, (list, tuple)):  # one flag per level
        return not any(value)
    if key == "mid_block_only_cross_attention" and value is False:  # diffusers reads None as False
        return True
    default = _ONLY_DEFAULT[key]
    if default is None or isinstance(default, bool):
        return value is default
    return not isinstance(value, bool) and value == default
