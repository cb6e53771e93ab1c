"""Latte: a video diffusion transformer (Ma et al. 2024, "Latte: Latent Diffusion Transformer
for Video Generation"), with every design switch of the paper.

The paper's four model variants (§3.2) are four layouts (``model.layout``) that share everything
but how their blocks meet space and time:

1. ``interleaved`` (``Latte``): spatial and temporal transformer blocks interleaved (the released model).
2. ``late_fusion`` (``LatteLateFusion``): all spatial blocks, then all temporal blocks (same blocks as 1).
3. ``factorized_attention``: one block holds a spatial self-attention, then a temporal one.
4. ``factorized_heads``: one attention whose heads split between space and time.

``depth`` counts attentions over one axis, as Latte counts its blocks: XL's 28 is 14 spatial +
14 temporal blocks (layouts 1, 2), 14 factorized-attention blocks (3), or 28 blocks whose
attention does both at once (4, so its parameter count equals layout 1's).

The other switches: per-frame patches or s×p×p tubelets (``patch_embed``); the timestep and
class through adaLN-Zero, adaLN-single or as extra tokens (``injection``, see blocks.py);
absolute sin-cos or rotary temporal positions (``temporal_pos``); cross-attention to text in the
spatial attention (``conditions.text_channels``, Latte-1); and image-video joint training: the last
``num_images`` frames of a batch are single images, which every spatial module sees and every
temporal module skips.

With adaLN-Zero every block starts as the identity and the untrained model outputs exactly zero.
Tokens live as a 4-D tensor ``(B, T, N, D)``. Conditioning is per frame, ``(B, T, D)``, so a
timestep per frame (``t`` of shape ``(B, T)``) is the general case and ``(B,)`` its broadcast.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from moviola.conditioning import Conditioning, check_accepted
from moviola.config import ConditionsConfig, LatteConfig
from moviola.models.latte.blocks import FactorizedAttentionBlock, FactorizedHeadsBlock
from moviola.nn import CrossAttention, LabelEmbedder, Mlp, TimestepEmbedder, rope_1d, sincos_2d, sincos_temporal
from moviola.nn.init import dit_init
from moviola.nn.inputs import masked_mean, text_tokens, with_context
from moviola.nn.patch import PatchEmbed, TubeletEmbed, unpatchify
from moviola.nn.transformer import FinalLayer, ModulatedBlock, TransformerBlock


# The tables are cached across calls; they are built outside inference mode so that a table first
# made while sampling under torch.inference_mode() can still be saved for backward in training.
@functools.lru_cache(maxsize=32)
def _spatial_pos(h: int, w: int, dim: int, base_size: Optional[int] = None, scale: float = 1.0) -> torch.Tensor:
    with torch.inference_mode(False):
        return sincos_2d(h, w, dim, base_size, scale)


@functools.lru_cache(maxsize=32)
def _temporal_pos(t: int, dim: int) -> torch.Tensor:
    with torch.inference_mode(False):
        return sincos_temporal(t, dim)


@functools.lru_cache(maxsize=32)
def _rope(t: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):
        return rope_1d(t, head_dim)


class Latte(nn.Module):
    """Latte denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    This class is the interleaved layout and the shared skeleton; another layout overrides
    ``build_blocks`` and ``run_blocks``. Build one with ``Latte.from_config(cfg, conditions, in_channels)``.
    """

    family = "latte"
    layout = "interleaved"
    joint_images = True  # takes appended single images (num_images) in image-video joint training
    block_chunks = 6  # modulation vectors per block: shift, scale, gate for attention and MLP
    paired_depth = True  # depth counts a spatial and a temporal attention per pair

    def __init__(self, cfg: LatteConfig, conditions: ConditionsConfig = ConditionsConfig(), in_channels: int = 4):
        super().__init__()
        self._check(cfg, conditions)
        dims = cfg.dims()
        hidden_size, depth, num_heads, mlp_ratio = dims.hidden_size, dims.depth, dims.num_heads, dims.mlp_ratio
        patch_size, qk_norm, learned_sigma = cfg.patch_size, cfg.qk_norm, cfg.learned_sigma
        patch_embed, tubelet_size, injection = cfg.patch_embed, cfg.tubelet_size, cfg.injection
        temporal_pos, text_pooled = cfg.temporal_pos, cfg.text_pooled
        num_classes, caption_channels = conditions.num_classes, conditions.text_channels
        context_frames = conditions.context_frames
        self.config, self.conditions = cfg, conditions
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learned_sigma else in_channels
        self.learned_sigma = learned_sigma
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.patch_embed, self.tubelet_size = patch_embed, tubelet_size
        self.injection, self.temporal_pos = injection, temporal_pos
        self.caption_channels = caption_channels
        self.pos_base_size, self.pos_interpolation_scale = cfg.pos_base_size, cfg.pos_interpolation_scale
        self.text_pooled, self.context_frames = text_pooled, context_frames
        self.accepts = frozenset(({"labels"} if num_classes else set())
                                 | ({"text", "text_mask"} if caption_channels else set())
                                 | ({"context", "context_mask"} if context_frames else set()))

        # context frames enter as extra input channels: x_t, m ∘ z and m (C + C + 1)
        embed_in = sum(size for _, size in self.input_groups(cfg, conditions, in_channels))
        if patch_embed == "frame":
            self.x_embedder = PatchEmbed(embed_in, hidden_size, patch_size)
        else:
            self.x_embedder = TubeletEmbed(embed_in, hidden_size, patch_size, tubelet_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size) if num_classes else None
        if injection == "adaln_single":  # PixArt's t_block: one projection shared by every block
            self.adaln_single = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.block_chunks * hidden_size))
        self.caption_projection = (Mlp(caption_channels, hidden_size, out_dim=hidden_size)
                                   if caption_channels else None)
        self.text_pooler = Mlp(caption_channels, hidden_size, out_dim=hidden_size) if text_pooled else None
        self.build_blocks(depth, dict(dim=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                      qk_norm=qk_norm, injection=injection))
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * tubelet_size * self.out_channels,
                                      injection)
        self.initialize_weights()

    def _check(self, cfg: LatteConfig, conditions: ConditionsConfig) -> None:
        """What a run config's validation also refuses, for models built directly from a config object."""
        if cfg.layout != self.layout:
            raise ValueError(f"{type(self).__name__} is layout {self.layout!r}, the config says {cfg.layout!r}: "
                             "build it with Latte.from_config")
        unsupported = [n for n in conditions.wanted() if n not in cfg.takes]
        if unsupported:
            raise ValueError(f"Latte does not take the condition(s) {unsupported}; it takes {sorted(cfg.takes)}")
        dims = cfg.dims()
        for name, value, options in (("patch_embed", cfg.patch_embed, ("frame", "tubelet")),
                                     ("injection", cfg.injection, ("adaln", "adaln_single", "tokens")),
                                     ("temporal_pos", cfg.temporal_pos, ("abs", "rope"))):
            if value not in options:
                raise ValueError(f"{name} must be one of {options}, got {value!r}")
        if self.paired_depth and dims.depth % 2:
            raise ValueError(f"Latte depth counts spatial + temporal blocks and must be even, got {dims.depth}")
        if cfg.patch_embed == "frame" and cfg.tubelet_size != 1:
            raise ValueError("tubelet_size is only used with patch_embed='tubelet'")
        if cfg.temporal_pos == "rope" and (dims.hidden_size // dims.num_heads) % 2:
            raise ValueError("temporal_pos='rope' needs an even attention head width")
        if cfg.text_pooled and not conditions.text_channels:
            raise ValueError("text_pooled needs a text model (conditions.text_channels)")

    @staticmethod
    def input_groups(cfg: LatteConfig, conditions: ConditionsConfig, in_channels: int) -> list[tuple[str, int]]:
        """The channel groups of the patch embedding's input, in order: x_t, then (m ∘ z, m) with context frames."""
        return [("x_t", in_channels)] + ([("context", in_channels + 1)] if conditions.context_frames else [])

    @classmethod
    def from_config(cls, cfg: LatteConfig, conditions: ConditionsConfig, in_channels: int) -> "Latte":
        """The Latte of ``cfg.layout`` (the denoiser protocol's constructor, models/base.py)."""
        return LATTE_CLASSES[cfg.layout](cfg, conditions, in_channels)

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """The parameters that train in ``stage``: ``all``; ``temporal`` (the temporal blocks: attention
        across frames, its norms and its modulation); ``spatial`` (everything else). The factorized layouts
        share one layer between the axes (one modulation for both attentions; one attention for both sets
        of heads), so they split no stage: freezing either half would freeze a part of the other."""
        if stage == "all":
            return list(self.parameters())
        if stage not in ("temporal", "spatial"):
            raise ValueError(f"stage must be 'all', 'temporal' or 'spatial', got {stage!r}")
        if self.layout not in ("interleaved", "late_fusion"):
            raise ValueError(f"stage {stage!r} needs separate spatial and temporal blocks: layout {self.layout!r} "
                             "shares layers between the axes (use layout interleaved or late_fusion, or stage all)")
        temporal = [p for name, p in self.named_parameters() if self._is_temporal(name)]
        ids = {id(p) for p in temporal}
        return temporal if stage == "temporal" else [p for p in self.parameters() if id(p) not in ids]

    @staticmethod
    def _is_temporal(name: str) -> bool:
        return name.startswith("temporal_blocks.")

    # ------------------------------------------------------------------ the layout's blocks
    def build_blocks(self, depth: int, block: dict) -> None:
        text = self.hidden_size if self.caption_channels else None
        self.spatial_blocks = nn.ModuleList(TransformerBlock(**block, context_dim=text) for _ in range(depth // 2))
        self.temporal_blocks = nn.ModuleList(TransformerBlock(**block) for _ in range(depth // 2))

    def run_blocks(self, tok: torch.Tensor, c: Optional[torch.Tensor], num_video: int, context) -> torch.Tensor:
        c_spatial, c_temporal = self._spatial_c(c), self._temporal_c(c, num_video)
        rope = self._rope(num_video, tok.device)
        for i, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks)):
            tok = spatial(tok, c_spatial, context=context)  # (B, T, N, D), attention within each frame
            tok = self.temporal_step(temporal, tok, c_temporal, num_video, i == 0, rope)
        return tok

    def temporal_step(self, block: nn.Module, tok: torch.Tensor, c: Optional[torch.Tensor], num_video: int,
                      first: bool, rope) -> torch.Tensor:
        """A temporal block over the video frames of tok (B, T, N, D); image frames pass unchanged."""
        video = tok[:, :num_video].transpose(1, 2)  # (B, N, Tv, D)
        if first and self.temporal_pos == "abs":
            # added once, before the first temporal block (as Latte)
            video = video + _temporal_pos(num_video, self.hidden_size).to(video.device, video.dtype)
        video = block(video, c, rope=rope).transpose(1, 2)  # (B, Tv, N, D), attention across frames
        return video if num_video == tok.shape[1] else torch.cat([video, tok[:, num_video:]], dim=1)

    def add_frame_pos(self, tok: torch.Tensor, num_video: int) -> torch.Tensor:
        """Absolute temporal positions on the video frames of tok (B, T, N, D) (variants 3 and 4)."""
        if self.temporal_pos != "abs":
            return tok
        pos = _temporal_pos(num_video, self.hidden_size).to(tok.device, tok.dtype)[:, None]  # (Tv, 1, D)
        video = tok[:, :num_video] + pos
        return video if num_video == tok.shape[1] else torch.cat([video, tok[:, num_video:]], dim=1)

    @staticmethod
    def _spatial_c(c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if c is None else c[:, :, None]  # (B, T, 1, ·): one vector per frame

    @staticmethod
    def _temporal_c(c: Optional[torch.Tensor], num_video: int) -> Optional[torch.Tensor]:
        return None if c is None else c[:, None, :num_video]  # (B, 1, Tv, ·): along the frame axis

    def _rope(self, num_video: int, device: torch.device):
        if self.temporal_pos != "rope":
            return None
        cos, sin = _rope(num_video, self.hidden_size // self.num_heads)
        return cos.to(device), sin.to(device)

    # ------------------------------------------------------------------ initialization
    def initialize_weights(self) -> None:
        """DiT's initialization; the zeroed adaLN and output layers make each block start as identity."""
        dit_init(self, self.x_embedder.proj)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, ModulatedBlock):
                m.modulation.zero_init(m)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        # PixArt-α's choices for the adaLN-single and text parts
        if self.injection == "adaln_single":
            nn.init.normal_(self.adaln_single[-1].weight, std=0.02)
        if self.caption_projection is not None:
            nn.init.normal_(self.caption_projection.fc1.weight, std=0.02)
            nn.init.normal_(self.caption_projection.fc2.weight, std=0.02)
        if self.text_pooler is not None:  # starts with no influence, like the cross-attention
            nn.init.normal_(self.text_pooler.fc1.weight, std=0.02)
            nn.init.zeros_(self.text_pooler.fc2.weight)
            nn.init.zeros_(self.text_pooler.fc2.bias)
        for m in self.modules():
            if isinstance(m, CrossAttention):  # text starts with no influence
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)

    # ------------------------------------------------------------------ conditioning
    def condition(self, t: torch.Tensor, cond: Optional[Conditioning], batch: int,
                  frames: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Timestep embeddings per token frame (B, T', D), and label embeddings (B, 1 or T', D) or None.

        With tubelets a token frame spans s frames; per-frame timesteps give it the mean of
        their s embeddings.
        """
        s = self.tubelet_size
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames // s)  # a (B,) timestep is a per-frame one, broadcast
        elif t.shape == (batch, frames) and s > 1:
            emb = self.t_embedder(t)  # (B, T, D)
            t_emb = emb.view(batch, frames // s, s, -1).mean(dim=2)  # (B, T/s, D)
            return t_emb, self._labels(cond, batch, frames)
        if t.shape != (batch, frames // s):
            raise ValueError(f"timesteps must have shape (B,) or (B, T) = ({batch}, {frames}), got {tuple(t.shape)}")
        return self.t_embedder(t), self._labels(cond, batch, frames)  # (B, T', D)

    def _labels(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        if self.y_embedder is None:
            return None
        if cond is None or cond.labels is None:
            raise ValueError(f"this Latte is class-conditional ({self.num_classes} classes): "
                             "pass Conditioning(labels=...) (-1 for the null class)")
        labels = cond.labels
        if labels.dim() == 1:
            return self.y_embedder(labels)[:, None]  # (B, 1, D) broadcast over frames
        if labels.shape != (batch, frames) or self.tubelet_size != 1:
            raise ValueError(f"labels must have shape (B,) or, with per-frame patches, (B, T) = ({batch}, {frames}); "
                             f"got {tuple(labels.shape)}")
        return self.y_embedder(labels)  # (B, T, D): a label per frame (joint image-video training)

    def text_context(self, cond: Optional[Conditioning], batch: int):
        """Projected text tokens (B, L, D) and their mask, or None (no text: the empty prompt)."""
        if self.caption_projection is None:
            return None
        tokens = text_tokens(cond, batch, self.caption_channels)  # checked (B, L, D_text), (B, L)
        return None if tokens is None else (self.caption_projection(tokens[0]), tokens[1])

    def pooled_text(self, cond: Optional[Conditioning]) -> Optional[torch.Tensor]:
        """``text_pooled``: the projected mask-mean of the text tokens (B, 1, D), or None."""
        if self.text_pooler is None or cond is None or cond.text is None:
            return None
        return self.text_pooler(masked_mean(cond.text, cond.text_mask))[:, None]  # (B, 1, D)

    def with_context(self, x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
        """``context_frames``: x_t (B, C, T, H, W) -> (x_t, m ∘ z, m) (B, 2C+1, T, H, W); no context = zeros."""
        return with_context(x, cond) if self.context_frames else x

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        check_accepted(cond, self.accepts, type(self).__name__)
        B, C, T, H, W = x.shape
        p, s = self.patch_size, self.tubelet_size
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {C}")
        if H % p or W % p:
            raise ValueError(f"frame size {H}×{W} is not divisible by the patch size {p}")
        if T % s:
            raise ValueError(f"{T} frames are not divisible by the tubelet size {s}")
        if num_images and (s != 1 or not 0 <= num_images < T):
            raise ValueError(f"num_images={num_images} needs per-frame patches and fewer images than the {T} frames")
        h, w, D = H // p, W // p, self.hidden_size
        num_video = (T - num_images) // s

        tok = self.x_embedder(self.with_context(x, cond))  # (B, T', N, D)
        tok = tok + _spatial_pos(h, w, D, self.pos_base_size, self.pos_interpolation_scale).to(tok.device, tok.dtype)
        t_emb, y_emb = self.condition(t, cond, B, T)
        c = t_emb if y_emb is None else t_emb + y_emb  # (B, T', D)
        pooled = self.pooled_text(cond)
        if pooled is not None:
            c = c + pooled
        if self.injection == "tokens":  # the timestep (and class) as extra tokens of every frame
            extra = [t_emb] + [e.expand_as(t_emb) for e in (y_emb, pooled) if e is not None]
            tok = torch.cat([tok, torch.stack(extra, dim=2).to(tok.dtype)], dim=2)  # (B, T', N+K, D)
            block_c = None
        elif self.injection == "adaln_single":
            block_c = self.adaln_single(c)  # (B, T', k·D)
        else:
            block_c = c
        tok = self.run_blocks(tok, block_c, num_video, self.text_context(cond, B))
        if self.injection == "tokens":
            tok = tok[:, :, :h * w]  # drop the condition tokens: (B, T', N, D)
        out = self.final_layer(tok, c[:, :, None])  # (B, T', N, s·p·p·C_out)
        return self.unpatchify(out, h, w)

    def unpatchify(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return unpatchify(out, h, w, self.patch_size, self.tubelet_size, self.out_channels)  # (B, C, T, H, W)


class LatteLateFusion(Latte):
    """Variant 2: every spatial block first, then every temporal block (late fusion)."""

    layout = "late_fusion"

    def run_blocks(self, tok: torch.Tensor, c: Optional[torch.Tensor], num_video: int, context) -> torch.Tensor:
        c_spatial, c_temporal = self._spatial_c(c), self._temporal_c(c, num_video)
        rope = self._rope(num_video, tok.device)
        for spatial in self.spatial_blocks:
            tok = spatial(tok, c_spatial, context=context)  # (B, T, N, D)
        for i, temporal in enumerate(self.temporal_blocks):
            tok = self.temporal_step(temporal, tok, c_temporal, num_video, i == 0, rope)
        return tok


class LatteFactorizedAttention(Latte):
    """Variant 3: each block attends over space, then over time, then applies its MLP."""

    layout = "factorized_attention"
    block_chunks = 9  # shift, scale, gate for the spatial attention, the temporal one and the MLP

    def build_blocks(self, depth: int, block: dict) -> None:
        text = self.hidden_size if self.caption_channels else None
        self.blocks = nn.ModuleList(FactorizedAttentionBlock(**block, context_dim=text) for _ in range(depth // 2))

    def run_blocks(self, tok: torch.Tensor, c: Optional[torch.Tensor], num_video: int, context) -> torch.Tensor:
        tok = self.add_frame_pos(tok, num_video)  # before the first temporal attention
        c, rope = self._spatial_c(c), self._rope(num_video, tok.device)
        for block in self.blocks:
            tok = block(tok, c, num_video, rope=rope, context=context)  # (B, T, N, D)
        return tok


class LatteFactorizedHeads(Latte):
    """Variant 4: each block's attention gives ``spatial_heads`` heads (default half) to space and
    the rest to time, and concatenates their outputs."""

    layout = "factorized_heads"
    paired_depth = False

    def build_blocks(self, depth: int, block: dict) -> None:
        text = self.hidden_size if self.caption_channels else None
        self.blocks = nn.ModuleList(FactorizedHeadsBlock(**block, context_dim=text, spatial_heads=self.config.spatial_heads)
                                    for _ in range(depth))

    def run_blocks(self, tok: torch.Tensor, c: Optional[torch.Tensor], num_video: int, context) -> torch.Tensor:
        tok = self.add_frame_pos(tok, num_video)
        c, rope = self._spatial_c(c), self._rope(num_video, tok.device)
        for block in self.blocks:
            tok = block(tok, c, num_video, rope=rope, context=context)  # (B, T, N, D)
        return tok


LATTE_CLASSES: dict[str, type[Latte]] = {cls.layout: cls for cls in (Latte, LatteLateFusion, LatteFactorizedAttention,
                                                                     LatteFactorizedHeads)}
