"""Temporal layers for frame-wise networks (Video LDM, Blattmann et al. 2023, §3.1).

- ``TemporalConvBlock``: a 3-D convolution residual block over (T, H, W).
- ``TemporalSelfAttention``: self-attention over the frames at each pixel, with RoPE on the frame
  index (a relative encoding), an optional local window (frame i sees frames j with |i − j| ≤ window)
  and an optional text cross-attention sublayer (``context_dim``).
- ``AlphaBlend``: ``h + (1 − α) · branch(h)``, α learned (sigmoid of a logit) or fixed.

ModelScope's and VideoCrafter's plain-residual temporal layers (no α; they return the layer's *output*,
input included, and carry the parameter names of diffusers' modules, so a ``UNet3DConditionModel``'s
weights load into them unchanged):

- ``TemporalConvLayer``: four GroupNorm-SiLU-Conv3d (3, 1, 1) layers on the clip, plus the input.
- ``TemporalTransformer``: a transformer over the frames at each pixel (self-attention, then
  self-attention again or cross-attention to the text, then GEGLU), with optional learned Shaw relative
  positions (``RelativePosition``) and a causal mask, plus the input.

All work on frames ``(B·T, C, H, W)``, as the 2-D network around them does, with ``frames`` = T
frames per clip. Joint image-video batches: the last ``num_images`` frames of each clip are single
images; the temporal branches act on the first ``T − num_images`` frames only (images never reach
the video frames), return a residual of exactly 0 for the images, and ``AlphaBlend`` passes them
through unchanged (α = 1 for images). Each branch's last layer is zero-initialized, so a network
that gains these layers starts out computing exactly what it computed before; with the defaults
(``num_images=0``, no window, no text) the computation is the one the temporal decoder
(autoencoders/) was trained with. Used by the temporal decoder and by Video LDM's U-Net.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from moviola.nn.attention import Attention, CrossAttention, attention
from moviola.nn.embeddings import rope_1d
from moviola.nn.unet import FeedForward


def _to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    BT, C, H, W = x.shape
    return x.reshape(BT // frames, frames, C, H, W).transpose(1, 2)  # (B, C, T, H, W)


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)


def _standard_layout(x: torch.Tensor) -> torch.Tensor:
    """x, contiguous. The frozen decoder's activations are channels-last (diffusers' posterior mean
    is a channel slice) and need no gradient; GroupNorm's CPU backward on such an input (torch 2.13)
    segfaults when only its weight needs a gradient, which is exactly our first temporal norm."""
    return x.contiguous()


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_frames(x: torch.Tensor, frames: int, num_images: int) -> int:
    """Validate ``frames``/``num_images`` against a frame batch x (B·T, C, H, W); returns B."""
    if x.dim() != 4:
        raise ValueError(f"x must be a frame batch (B·T, C, H, W), got shape {tuple(x.shape)}")
    if not _is_int(frames) or frames < 1:
        raise ValueError(f"frames must be a positive int (frames per clip), got {frames!r}")
    if x.shape[0] % frames:
        raise ValueError(f"frames={frames} does not divide the batch of {x.shape[0]} frames")
    if not _is_int(num_images) or not 0 <= num_images < frames:
        raise ValueError(f"num_images must be an int in [0, frames) = [0, {frames}) (the last num_images "
                         f"frames of each clip are images; at least one video frame), got {num_images!r}")
    return x.shape[0] // frames


def _video_frames(x: torch.Tensor, B: int, frames: int, num_images: int) -> torch.Tensor:
    """The first ``frames − num_images`` frames of each clip: (B·V, C, H, W)."""
    _, C, H, W = x.shape
    V = frames - num_images
    return x.reshape(B, frames, C, H, W)[:, :V].reshape(B * V, C, H, W)


def _with_zero_images(r: torch.Tensor, B: int, num_images: int) -> torch.Tensor:
    """A residual (B·V, C, H, W) of the video frames -> (B·T, C, H, W), exactly 0 for the images."""
    BV, C, H, W = r.shape
    V = BV // B
    r = r.reshape(B, V, C, H, W)
    r = torch.cat([r, r.new_zeros(B, num_images, C, H, W)], dim=1)  # (B, T, C, H, W)
    return r.reshape(B * (V + num_images), C, H, W)


class TemporalConvBlock(nn.Module):
    """Video LDM's 3-D convolution residual block; returns the residual (not x + residual).

    GroupNorm → SiLU → Conv3d → GroupNorm → SiLU → Conv3d (zero-initialized). The norms take
    statistics per frame, as the 2-D decoder's do, so frames interact only through the
    convolutions' temporal kernel. Time is padded by repeating the edge frames: the first and last
    frame see a still video, not black frames, and an image (T = 1) is a still video. With
    ``num_images`` > 0 the block runs on each clip's video frames alone (the images are not part of
    the video, so the last video frame is the edge) and the images' residual is 0.
    """

    def __init__(self, channels: int, groups: int, temporal_kernel: int = 3, spatial_kernel: int = 1,
                 eps: float = 1e-6):
        super().__init__()
        for name, k in (("temporal_kernel", temporal_kernel), ("spatial_kernel", spatial_kernel)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {k}")
        kernel = (temporal_kernel, spatial_kernel, spatial_kernel)
        pad = (0, spatial_kernel // 2, spatial_kernel // 2)  # time is padded by hand (replicate)
        self.time_pad = temporal_kernel // 2
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, kernel, padding=pad)
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv2 = nn.Conv3d(channels, channels, kernel, padding=pad)
        nn.init.zeros_(self.conv2.weight)  # the block starts as exactly zero: the network is unchanged
        nn.init.zeros_(self.conv2.bias)

    def _conv(self, conv: nn.Conv3d, x: torch.Tensor, frames: int) -> torch.Tensor:
        v = _to_video(x, frames)  # (B, C, T, H, W)
        if self.time_pad:
            p = self.time_pad
            v = F.pad(v, (0, 0, 0, 0, p, p), mode="replicate")  # (B, C, T + 2p, H, W)
        return _to_frames(conv(v))  # (B·T, C, H, W)

    def _residual(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = _standard_layout(x)
        h = self._conv(self.conv1, F.silu(self.norm1(x)), frames)
        return self._conv(self.conv2, F.silu(self.norm2(h)), frames)

    def forward(self, x: torch.Tensor, frames: int, num_images: int = 0) -> torch.Tensor:
        """x: (B·T, C, H, W), T = frames, the last num_images frames of each clip images -> residual, same shape."""
        B = _check_frames(x, frames, num_images)
        if num_images == 0:
            return self._residual(x, frames)
        r = self._residual(_video_frames(x, B, frames, num_images), frames - num_images)  # (B·V, C, H, W)
        return _with_zero_images(r, B, num_images)


class TemporalSelfAttention(nn.Module):
    """Self-attention over the T frames at each pixel; returns the residual.

    Positions are rotary (RoPE) on the frame index: the scores depend only on frame offsets, the
    relative sinusoidal encoding Video LDM uses so that clips longer than the training clips work.
    ``window``: frame i attends only to frames j with |i − j| ≤ window (a boolean attention mask;
    the paper masks at 8 frames to sample longer clips). ``context_dim``: a text cross-attention
    sublayer after the self-attention (LayerNorm → cross-attention of every pixel's frames to the
    clip's text tokens, zero-initialized output), as in a transformer block:

        y = x + SelfAttn(GroupNorm(x));   residual = y + CrossAttn(LayerNorm(y), text) − x

    forward then needs ``context`` (B, L, context_dim) and takes an optional ``context_mask``
    (B, L), True = a real token. With ``num_images`` > 0 only each clip's video frames attend (to
    each other), and the images' residual is 0.
    """

    def __init__(self, channels: int, groups: int, head_dim: int = 64, eps: float = 1e-6,
                 window: int | None = None, context_dim: int | None = None):
        super().__init__()
        heads = max(1, channels // head_dim)
        if channels % heads or (channels // heads) % 2:
            raise ValueError(f"temporal attention over {channels} channels needs an even head width; "
                             f"{heads} heads of {channels / heads:g} channels does not work (change head_dim)")
        if window is not None and (not _is_int(window) or window < 0):
            raise ValueError(f"window must be None or an int >= 0 (frames i, j attend if |i - j| <= window), "
                             f"got {window!r}")
        if context_dim is not None and (not _is_int(context_dim) or context_dim < 1):
            raise ValueError(f"context_dim must be None or a positive int (the text width), got {context_dim!r}")
        self.window = window
        self.context_dim = context_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.attn = Attention(channels, heads)
        nn.init.zeros_(self.attn.proj.weight)  # the block starts as exactly zero: the network is unchanged
        nn.init.zeros_(self.attn.proj.bias)
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels, eps=eps)
            self.cross_attn = CrossAttention(channels, context_dim, heads)
            nn.init.zeros_(self.cross_attn.proj.weight)  # zero too: text adds nothing at first
            nn.init.zeros_(self.cross_attn.proj.bias)

    def window_mask(self, frames: int, device: torch.device | None = None) -> torch.Tensor | None:
        """(T, T) bool, True where frame i may attend to frame j (|i − j| ≤ window); None = all frames."""
        if self.window is None or self.window >= frames - 1:
            return None  # every pair is allowed: no mask (same result, faster kernels)
        idx = torch.arange(frames, device=device)
        return (idx[:, None] - idx[None, :]).abs() <= self.window

    def _check_context(self, B: int, context: torch.Tensor | None,
                       context_mask: torch.Tensor | None) -> None:
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("context/context_mask given to a TemporalSelfAttention without text "
                                 "cross-attention (construct it with context_dim)")
            return
        if context is None:
            raise ValueError(f"context is required: this TemporalSelfAttention has text cross-attention "
                             f"(context_dim={self.context_dim}); pass context of shape (B, L, {self.context_dim})")
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
            raise ValueError(f"context must have shape (B, L, context_dim) = ({B}, L, {self.context_dim}), "
                             f"got {tuple(context.shape)}")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"context_mask must have shape (B, L) = {tuple(context.shape[:2])}, "
                             f"got {tuple(context_mask.shape)}")

    def _residual(self, x: torch.Tensor, frames: int, context: torch.Tensor | None,
                  context_mask: torch.Tensor | None) -> torch.Tensor:
        BT, C, H, W = x.shape
        B = BT // frames
        x = _standard_layout(x)
        h = self.norm(x).reshape(B, frames, C, H * W)  # (B, T, C, H·W)
        h = h.permute(0, 3, 1, 2).reshape(B * H * W, frames, C)  # (B·H·W, T, C)
        cos, sin = rope_1d(frames, self.attn.head_dim)
        out = self.attn(h, attn_mask=self.window_mask(frames, x.device),
                        rope=(cos.to(x.device), sin.to(x.device)))  # (B·H·W, T, C)
        if self.context_dim is not None:
            x_seq = x.reshape(B, frames, C, H * W).permute(0, 3, 1, 2).reshape(B * H * W, frames, C)
            y = x_seq + out  # the stream after the self-attention sublayer, (B·H·W, T, C)
            # Cross-attention treats queries independently, so every pixel's frame sequence of clip b
            # attends to clip b's text as one query sequence of H·W·T tokens: the text (B, L, D) is
            # projected once per clip and shared by all its pixels (no loop, no copy of the text).
            q = self.cross_norm(y).reshape(B, H * W * frames, C)  # (B, H·W·T, C)
            cross = self.cross_attn(q, context, context_mask)  # (B, H·W·T, C)
            out = out + cross.reshape(B * H * W, frames, C)
        out = out.reshape(B, H * W, frames, C).permute(0, 2, 3, 1)  # (B, T, C, H·W)
        return out.reshape(BT, C, H, W)  # (B·T, C, H, W)

    def forward(self, x: torch.Tensor, frames: int, num_images: int = 0, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·T, C, H, W), T = frames, the last num_images frames of each clip images -> residual, same shape."""
        B = _check_frames(x, frames, num_images)
        self._check_context(B, context, context_mask)
        if num_images == 0:
            return self._residual(x, frames, context, context_mask)
        xv = _video_frames(x, B, frames, num_images)  # (B·V, C, H, W)
        r = self._residual(xv, frames - num_images, context, context_mask)
        return _with_zero_images(r, B, num_images)


class AlphaBlend(nn.Module):
    """``α · h + (1 − α) · (h + branch(h))`` = ``h + (1 − α) · branch(h)``, one scalar α per layer.

    ``learned=True``: α = sigmoid(mix_logit), a parameter, alpha_init in (0, 1). ``learned=False``:
    α is the fixed buffer ``fixed_alpha``, alpha_init in [0, 1]. Image frames (the last
    ``num_images`` of each clip) come out exactly as ``h`` (α = 1 for them), and so does every frame
    when α = 1 (a logit of +inf, or a fixed α of 1: the image model), with no 0·inf NaN.
    """

    def __init__(self, branch: nn.Module, alpha_init: float = 0.5, learned: bool = True):
        super().__init__()
        if not isinstance(alpha_init, numbers.Real) or isinstance(alpha_init, bool):
            # one ValueError per bad argument, the type included
            raise ValueError(f"alpha_init must be a number, got {alpha_init!r}")  # noqa: TRY004
        if learned and not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1) when learned (α = sigmoid(logit)), got {alpha_init}")
        if not learned and not 0.0 <= alpha_init <= 1.0:
            raise ValueError(f"alpha_init must be in [0, 1] for a fixed α, got {alpha_init}")
        self.branch = branch
        self.learned = bool(learned)
        if self.learned:
            self.mix_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha_init)))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_logit) if self.learned else self.fixed_alpha

    def forward(self, h: torch.Tensor, frames: int, num_images: int = 0, **branch_kwargs) -> torch.Tensor:
        """h: (B·T, C, H, W), T = frames; branch_kwargs (e.g. context, context_mask) go to the branch."""
        B = _check_frames(h, frames, num_images)
        scale = 1.0 - self.alpha  # 0-dim, in [0, 1]
        r = self.branch(h, frames, num_images=num_images, **branch_kwargs)
        keep = scale == 0  # α = 1: the output is exactly h
        if num_images:
            is_image = torch.arange(frames, device=h.device) >= frames - num_images  # (T,)
            keep = keep | is_image.repeat(B)[:, None, None, None]  # (B·T, 1, 1, 1): images are exactly h
        # Where h is kept, the branch output becomes -0.0: h + (1 − α)·(−0.0) is h bit for bit (signed
        # zeros included), and no 0·inf NaN appears, in the output or in the logit's gradient, even
        # for a non-finite branch output. Elsewhere r is unchanged: h + (1 − α)·r as always.
        r = torch.where(keep, -0.0, r)
        return h + scale * r


# ---------------------------------------------------------------- ModelScope / VideoCrafter: plain residuals
def _on_video_frames(x: torch.Tensor, frames: int, num_images: int, fn) -> torch.Tensor:
    """``fn(video frames (B·V, C, H, W), V)`` on each clip's first V = frames − num_images frames; the images
    come out unchanged (they never enter ``fn``, so they never mix into the video)."""
    B = _check_frames(x, frames, num_images)
    if num_images == 0:
        return fn(x, frames)
    _, C, H, W = x.shape
    V = frames - num_images
    clips = x.reshape(B, frames, C, H, W)
    video = fn(clips[:, :V].reshape(B * V, C, H, W), V).reshape(B, V, C, H, W)
    return torch.cat([video, clips[:, V:]], dim=1).reshape(B * frames, C, H, W)


class TemporalConvLayer(nn.Module):
    """ModelScope's temporal convolution (VideoCrafter2's ``TemporalConvBlock``): ``conv1`` … ``conv4``, each
    GroupNorm → SiLU → [Dropout, from conv2 on] → Conv3d with kernel (3, 1, 1), on the clip (B, C, T, H, W),
    plus the input; the last convolution is zero-initialized, so the layer starts as the identity.

    The parameter names are diffusers' ``TemporalConvLayer``'s (``conv1.0`` the norm, ``conv1.2`` the
    convolution, ``conv2.3`` …), and so is the computation, which differs from ``TemporalConvBlock``'s: the
    GroupNorms take their statistics over the whole clip (every frame), and time is zero-padded (the
    convolutions' own padding). Returns the output, input included. With ``num_images`` > 0 only each clip's
    video frames enter (the norms' statistics too) and the images come out unchanged.
    """

    def __init__(self, channels: int, groups: int = 32, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()

        def layer(first: bool) -> nn.Sequential:
            parts = [nn.GroupNorm(groups, channels, eps=eps), nn.SiLU()]
            if not first:
                parts.append(nn.Dropout(dropout))
            parts.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*parts)

        self.conv1, self.conv2, self.conv3, self.conv4 = layer(True), layer(False), layer(False), layer(False)
        nn.init.zeros_(self.conv4[-1].weight)  # the layer starts as the identity: the network is unchanged
        nn.init.zeros_(self.conv4[-1].bias)

    def _clip(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        v = _to_video(_standard_layout(x), frames)  # (B, C, T, H, W)
        h = self.conv4(self.conv3(self.conv2(self.conv1(v))))
        return _to_frames(v + h)  # (B·T, C, H, W)

    def forward(self, x: torch.Tensor, frames: int, num_images: int = 0) -> torch.Tensor:
        """x: (B·T, C, H, W), T = frames, the last num_images frames of each clip images -> the output, same shape."""
        return _on_video_frames(x, frames, num_images, self._clip)


class RelativePosition(nn.Module):
    """Learned relative positions (Shaw, Uszkoreit, Vaswani 2018; VideoCrafter's ``RelativePosition``): one
    vector of ``head_dim`` per offset j − i, clipped to [−max_distance, max_distance] (``embeddings_table``,
    2·max_distance + 1 rows, shared by the heads). ``forward(Lq, Lk)`` -> (Lq, Lk, head_dim)."""

    def __init__(self, head_dim: int, max_distance: int):
        super().__init__()
        if not _is_int(max_distance) or max_distance < 1:
            raise ValueError(f"max_distance (temporal_length) must be a positive int, got {max_distance!r}")
        self.max_distance = max_distance
        self.embeddings_table = nn.Parameter(torch.empty(2 * max_distance + 1, head_dim))
        nn.init.xavier_uniform_(self.embeddings_table)

    def forward(self, length_q: int, length_k: int) -> torch.Tensor:
        device = self.embeddings_table.device
        offset = torch.arange(length_k, device=device)[None, :] - torch.arange(length_q, device=device)[:, None]
        m = self.max_distance
        return self.embeddings_table[offset.clamp(-m, m) + m]  # (Lq, Lk, head_dim)


class TemporalAttention(nn.Module):
    """Multi-head attention with diffusers' ``Attention`` names (bias-free ``to_q``/``to_k``/``to_v``,
    ``to_out.0``), ``heads`` × ``head_dim`` wide: self-attention, or cross-attention to ``context_dim``-wide
    tokens. ``relative_length``: learned Shaw relative positions on the keys and the values
    (``relative_position_k`` / ``relative_position_v``, VideoCrafter's names), clipped at ± that many positions.

    ``mask``: bool, broadcastable to (N, heads, Lq, Lk), True = may attend. Without relative positions this is
    ``scaled_dot_product_attention``. With them, the scores gain q_i·a^K_ij (SDPA could take that as an
    additive bias) but the output gains Σ_j p_ij a^V_ij, which needs the attention weights p themselves:
    SDPA does not return them, so that path is written out (scores, softmax in float32, two einsums).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 relative_length: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # diffusers' to_out.1 is a parameter-free dropout
        self.relative = relative_length is not None
        if self.relative:
            self.relative_position_k = RelativePosition(head_dim, relative_length)
            self.relative_position_v = RelativePosition(head_dim, relative_length)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        N, L, _ = x.shape
        source = x if context is None else context

        def split(y: torch.Tensor) -> torch.Tensor:  # (N, S, heads·head_dim) -> (N, heads, S, head_dim)
            return y.view(N, y.shape[1], self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(source)), split(self.to_v(source))
        out = self._relative(q, k, v, mask) if self.relative else attention(q, k, v, mask)  # (N, heads, L, hd)
        return self.to_out[0](out.transpose(1, 2).reshape(N, L, self.heads * self.head_dim))

    def _relative(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """softmax_j((q_i·k_j + q_i·a^K_ij) / √d) weighting (v_j + a^V_ij)."""
        Lq, Lk = q.shape[2], k.shape[2]
        a_k = self.relative_position_k(Lq, Lk).to(q.dtype)  # (Lq, Lk, hd)
        a_v = self.relative_position_v(Lq, Lk).to(v.dtype)
        scores = (q @ k.transpose(-1, -2) + torch.einsum("nhid,ijd->nhij", q, a_k)) * self.head_dim ** -0.5
        scores = scores.float()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # every row keeps at least its own frame
        p = scores.softmax(dim=-1).to(v.dtype)  # (N, heads, Lq, Lk)
        return p @ v + torch.einsum("nhij,ijd->nhid", p, a_v)


class TemporalTransformerBlock(nn.Module):
    """diffusers' ``BasicTransformerBlock`` as ``TransformerTemporalModel`` builds it: pre-LayerNorm
    self-attention (``attn1``), a second attention (``attn2``: self-attention again, diffusers'
    ``double_self_attention``; or cross-attention to the text with ``context_dim``), a GEGLU feed-forward.
    The causal mask and the relative positions apply to the self-attentions."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 relative_length: int | None = None):
        super().__init__()
        self.cross = context_dim is not None
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = TemporalAttention(dim, heads, head_dim, relative_length=relative_length)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = TemporalAttention(dim, heads, head_dim, context_dim=context_dim,
                                       relative_length=None if self.cross else relative_length)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B·H·W, T, dim), pixels of clip b first; mask (T, T) for the self-attentions; context (B, L, D) and
        context_mask (B, 1, 1, L) for the cross-attention."""
        x = x + self.attn1(self.norm1(x), mask=mask)
        if not self.cross:
            x = x + self.attn2(self.norm2(x), mask=mask)
        else:
            # every query attends independently: clip b's H·W·T queries attend to its text as one sequence
            N, T, D = x.shape
            B = context.shape[0]
            q = self.norm2(x).reshape(B, N // B * T, D)  # (B, H·W·T, dim)
            x = x + self.attn2(q, context, context_mask).reshape(N, T, D)
        return x + self.ff(self.norm3(x))


class TemporalTransformer(nn.Module):
    """A transformer over the frames at each pixel (ModelScope's ``TransformerTemporalModel``, VideoCrafter's
    ``TemporalTransformer``), with diffusers' parameter names (``norm``, ``proj_in``,
    ``transformer_blocks.k.{norm1, attn1.to_q, …, norm2, attn2, norm3, ff.net.0.proj, ff.net.2}``, ``proj_out``):

        GroupNorm over the clip (B, C, T, H, W) → (B·H·W, T, C) → Linear proj_in to heads·head_dim →
        ``num_layers`` transformer blocks → Linear proj_out (zero-initialized) → + the input

    ``context_dim``: the blocks' second attention cross-attends to the text (VideoCrafter's
    ``only_self_att=False``; forward then takes ``context`` (B, L, context_dim) and ``context_mask`` (B, L),
    True = a real token, a row with none attends to every token as the U-Net's spatial cross-attention does);
    None: self-attention twice (ModelScope, VideoCrafter's default). ``relative_position``: learned Shaw
    relative positions in every self-attention, clipped at ± ``temporal_length`` frames (VideoCrafter 1).
    ``causal``: frame i attends to frames j ≤ i only. Returns the output, input included; with
    ``num_images`` > 0 only each clip's video frames enter (the norm's statistics too), the images come out
    unchanged.
    """

    def __init__(self, channels: int, groups: int, num_heads: int, head_dim: int, num_layers: int = 1,
                 context_dim: int | None = None, relative_position: bool = False, temporal_length: int = 16,
                 causal: bool = False, eps: float = 1e-6):
        super().__init__()
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim), ("num_layers", num_layers)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if context_dim is not None and (not _is_int(context_dim) or context_dim < 1):
            raise ValueError(f"context_dim must be None or a positive int (the text width), got {context_dim!r}")
        inner = num_heads * head_dim
        self.context_dim, self.causal = context_dim, bool(causal)
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(inner, num_heads, head_dim, context_dim,
                                     temporal_length if relative_position else None) for _ in range(num_layers))
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)  # the layer starts as the identity: the network is unchanged
        nn.init.zeros_(self.proj_out.bias)

    def causal_mask(self, frames: int, device: torch.device | None = None) -> torch.Tensor | None:
        """(T, T) bool, True where frame i may attend to frame j (j ≤ i); None when not causal."""
        if not self.causal:
            return None
        return torch.ones(frames, frames, dtype=torch.bool, device=device).tril()

    def _text(self, B: int, context: torch.Tensor | None,
              context_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The text and its attention mask (B, 1, 1, L), checked."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("context/context_mask given to a TemporalTransformer without text cross-attention "
                                 "(construct it with context_dim)")
            return None, None
        if context is None:
            raise ValueError(f"context is required: this TemporalTransformer cross-attends to the text "
                             f"(context_dim={self.context_dim}); pass context of shape (B, L, {self.context_dim})")
        if context.dim() != 3 or context.shape[0] != B or context.shape[2] != self.context_dim:
            raise ValueError(f"context must have shape (B, L, context_dim) = ({B}, L, {self.context_dim}), "
                             f"got {tuple(context.shape)}")
        if context_mask is None:
            return context, None
        if tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"context_mask must have shape (B, L) = {tuple(context.shape[:2])}, "
                             f"got {tuple(context_mask.shape)}")
        keep = context_mask.to(torch.bool)
        keep = keep | ~keep.any(dim=-1, keepdim=True)  # no real token: attend to all (never NaN)
        return context, keep[:, None, None, :]

    def _clip(self, x: torch.Tensor, frames: int, context: torch.Tensor | None,
              context_mask: torch.Tensor | None) -> torch.Tensor:
        BT, C, H, W = x.shape
        B = BT // frames
        v = _to_video(_standard_layout(x), frames)  # (B, C, T, H, W)
        h = self.norm(v).permute(0, 3, 4, 2, 1).reshape(B * H * W, frames, C)  # (B·H·W, T, C)
        h = self.proj_in(h)  # (B·H·W, T, heads·head_dim)
        mask = self.causal_mask(frames, x.device)
        for block in self.transformer_blocks:
            h = block(h, mask, context, context_mask)
        h = self.proj_out(h)  # (B·H·W, T, C)
        h = h.reshape(B, H, W, frames, C).permute(0, 3, 4, 1, 2).reshape(BT, C, H, W)  # (B·T, C, H, W)
        return x + h

    def forward(self, x: torch.Tensor, frames: int, num_images: int = 0, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·T, C, H, W), T = frames, the last num_images frames of each clip images -> the output, same shape."""
        B = _check_frames(x, frames, num_images)
        context, context_mask = self._text(B, context, context_mask)
        return _on_video_frames(x, frames, num_images, lambda v, f: self._clip(v, f, context, context_mask))
