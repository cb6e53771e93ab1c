"""W.A.L.T: the window-attention latent transformer (Gupta et al. 2023, "Photorealistic Video Generation
with Diffusion Models"), with every design choice of the paper a switch (docs/walt.md).

- Each latent frame is cut into p×p patches (a Conv2d, per frame); learnable absolute spatial and
  temporal position embeddings are added (an image frame gets the first latent frame's temporal one).
- Layers alternate spatial-window (SW: 1×h'×w', default the whole frame) and spatiotemporal-window
  (STW: t×h'×w', default all frames × h/2 × w/2) self-attention, each with a Swin-style learned
  relative position bias and QK-normalization. Image frames attend to themselves in STW.
- The conditioning vector c + t (timestep, class, pooled text, noise level: per frame) modulates
  every layer by AdaLN-LoRA (``adaln: lora``, Eq. 3) or a separate adaLN per layer (DiT).
- Text: ``k = v = concat[q, text]`` per window (``concat_kv``) or plain cross-attention, in the SW
  layers (and the STW ones with ``text_in_stw``).
- Beside x_t along channels: context frames (m ∘ z, m), the previous x0 estimate (self-conditioning)
  and a low-resolution latent upsampled by a learned depth-to-space convolution (super-resolution).

Everything that modulates or adds starts at zero (adaLN-Zero), so the untrained model outputs zero.
At another latent size than ``pos_grid`` the absolute and relative tables are interpolated and the
windows scaled on the fly (``positions``, ``WaltConfig.windows``); ``regrid`` bakes that into the weights.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from moviola.conditioning import Conditioning, check_accepted
from moviola.config import ConditionsConfig, WaltConfig
from moviola.models.base import stage_parameters
from moviola.models.walt.blocks import Text, WaltBlock
from moviola.nn import (AdaLNLoRA, AdaLNLoRAShared, ConcatKVAttention, CrossAttention, DepthToSpaceUpsample,
                        LabelEmbedder, Mlp, PatchEmbed, TimestepEmbedder, masked_mean, resize_relative_table,
                        resize_table, self_cond_input, text_tokens, unpatchify, with_context)
from moviola.nn.init import dit_init
from moviola.nn.transformer import FinalLayer, ModulatedBlock


class Walt(nn.Module):
    """W.A.L.T denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    Build one with ``Walt.from_config(cfg, conditions, in_channels)``.
    """

    family = "walt"
    joint_images = True  # takes num_images trailing single images (image-video joint training)

    def __init__(self, cfg: WaltConfig, conditions: ConditionsConfig = ConditionsConfig(), in_channels: int = 4):
        super().__init__()
        unsupported = [n for n in conditions.wanted() if n not in cfg.takes]
        if unsupported:
            raise ValueError(f"W.A.L.T does not take the condition(s) {unsupported}; it takes {sorted(cfg.takes)}")
        dims = cfg.dims()
        self.token_grid = cfg.token_grid()  # (t, h, w) of the learned tables; raises when pos_grid is unset
        windows = cfg.train_windows()
        if (cfg.text_pooled or cfg.text_in_stw) and not conditions.text_channels:
            raise ValueError("text_pooled and text_in_stw need a text model (conditions.text_channels)")
        self.config, self.conditions = cfg, conditions
        self.in_channels, self.learned_sigma = in_channels, cfg.learned_sigma
        self.out_channels = 2 * in_channels if cfg.learned_sigma else in_channels
        self.patch_size, self.hidden_size, D = cfg.patch_size, dims.hidden_size, dims.hidden_size
        self.num_classes, self.text_channels = conditions.num_classes, conditions.text_channels
        self.context_frames, self.self_conditioning = conditions.context_frames, conditions.self_cond > 0
        self.accepts = frozenset(({"labels"} if self.num_classes else set())
                                 | ({"text", "text_mask"} if self.text_channels else set())
                                 | ({"context", "context_mask"} if self.context_frames else set())
                                 | ({"self_cond"} if self.self_conditioning else set())
                                 | ({"low_res"} if conditions.low_res else set())
                                 | ({"noise_level"} if conditions.noise_level else set()))

        # input channels: x_t, (m ∘ z, m), the x0 estimate, the upsampled low-resolution latent
        embed_in = sum(size for _, size in self.input_groups(cfg, conditions, in_channels))
        self.x_embedder = PatchEmbed(embed_in, D, cfg.patch_size)
        self.low_res_upsample = DepthToSpaceUpsample(in_channels) if conditions.low_res else None
        t0, h0, w0 = self.token_grid
        self.pos_embed_spatial = nn.Parameter(torch.zeros(h0, w0, D))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(t0, D))
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(self.num_classes, D) if self.num_classes else None
        self.noise_embedder = TimestepEmbedder(D) if conditions.noise_level else None  # noise augmentation level
        self.caption_projection = Mlp(self.text_channels, D, out_dim=D) if self.text_channels else None
        self.text_pooler = Mlp(self.text_channels, D, out_dim=D) if cfg.text_pooled else None
        self.adaln_shared = AdaLNLoRAShared(D, 6) if cfg.adaln == "lora" else None  # A^1 = MLP(c + t)
        text = cfg.text_attention if self.text_channels else None
        self.blocks = nn.ModuleList(
            WaltBlock(D, dims.num_heads, windows, dims.mlp_ratio, cfg.qk_norm, cfg.relative_bias,
                      (self._injection(), self._injection()), text, cfg.text_in_stw)
            for _ in range(dims.depth // 2))
        self.final_layer = FinalLayer(D, cfg.patch_size ** 2 * self.out_channels, "adaln")
        self.initialize_weights()

    def _injection(self):
        """A layer's modulation: its own adaLN, or AdaLN-LoRA: the shared A^1 plus this layer's rank-r
        update. Every layer has one: the paper's rank ablation counts 24 of them in L (docs/walt.md)."""
        if self.config.adaln == "separate":
            return "adaln"
        return AdaLNLoRA(self.config.adaln_lora_rank)

    @staticmethod
    def input_groups(cfg: WaltConfig, conditions: ConditionsConfig, in_channels: int) -> list[tuple[str, int]]:
        """The channel groups of the patch embedding's input, in the order ``inputs`` concatenates them."""
        return ([("x_t", in_channels)] + ([("context", in_channels + 1)] if conditions.context_frames else [])
                + ([("self_cond", in_channels)] if conditions.self_cond > 0 else [])
                + ([("low_res", in_channels)] if conditions.low_res else []))

    @classmethod
    def from_config(cls, cfg: WaltConfig, conditions: ConditionsConfig, in_channels: int) -> "Walt":
        """The denoiser protocol's constructor (models/base.py)."""
        return cls(cfg, conditions, in_channels)

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """``all``; ``temporal``: the spatiotemporal-window layers (all their weights); ``spatial``: the rest."""
        return stage_parameters(self, stage, lambda name: ".spatiotemporal." in name)

    # ------------------------------------------------------------------ initialization
    def initialize_weights(self) -> None:
        """DiT's initialization; zero adaLN, output and text projections make the untrained model output zero."""
        dit_init(self, self.x_embedder.proj)
        nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)  # learnable absolute positions (ViT)
        nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)
        for embedder in (self.t_embedder, self.noise_embedder):
            if embedder is not None:
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        if self.adaln_shared is not None:
            self.adaln_shared.zero_init()
        for m in self.modules():
            if isinstance(m, ModulatedBlock):
                m.modulation.zero_init(m)  # adaLN-Zero: every layer starts as the identity
            if isinstance(m, (CrossAttention, ConcatKVAttention)):  # text starts with no influence
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.caption_projection is not None:
            nn.init.normal_(self.caption_projection.fc1.weight, std=0.02)
            nn.init.normal_(self.caption_projection.fc2.weight, std=0.02)
        if self.text_pooler is not None:
            nn.init.normal_(self.text_pooler.fc1.weight, std=0.02)
            nn.init.zeros_(self.text_pooler.fc2.weight)
            nn.init.zeros_(self.text_pooler.fc2.bias)

    # ------------------------------------------------------------------ inputs and conditioning
    def inputs(self, x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
        """x_t (B, C, T, H, W) with the conditions that enter along channels: (x_t[, m ∘ z, m][, x̃0][, up(z_lr)])."""
        parts = [with_context(x, cond) if self.context_frames else x]  # (B, C or 2C+1, T, H, W)
        if self.self_conditioning:
            parts.append(self_cond_input(x, cond))  # (B, C, T, H, W), zeros without an estimate
        if self.low_res_upsample is not None:
            low = None if cond is None else cond.low_res  # (B, C, T, H/2, W/2)
            B, C, T, H, W = x.shape
            if low is None or low.shape != (B, C, T, H // 2, W // 2):
                raise ValueError(f"this W.A.L.T upsamples a low-resolution latent: pass Conditioning(low_res=...) "
                                 f"of shape {(B, C, T, H // 2, W // 2)}, got "
                                 f"{None if low is None else tuple(low.shape)}")
            parts.append(self.low_res_upsample(low.to(x.dtype)))  # (B, C, T, H, W)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def condition(self, t: torch.Tensor, cond: Optional[Conditioning], batch: int, frames: int) -> torch.Tensor:
        """The conditioning vector c + t per frame (B, T, D): timestep, class, noise level, pooled text."""
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] == batch:
            t = t[:, None].expand(batch, frames)  # a (B,) timestep is a per-frame one, broadcast
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must have shape (B,) or (B, T) = ({batch}, {frames}), got {tuple(t.shape)}")
        c = self.t_embedder(t)  # (B, T, D)
        if self.y_embedder is not None:
            c = c + self._labels(cond, batch, frames)
        if self.noise_embedder is not None:  # noise-conditioning augmentation of the low-resolution input
            level = None if cond is None else cond.noise_level
            level = torch.zeros(batch, device=t.device) if level is None else level  # absent: a clean input
            if level.shape != (batch,):
                raise ValueError(f"noise_level must have shape (B,) = ({batch},), got {tuple(level.shape)}")
            c = c + self.noise_embedder(level)[:, None]  # (B, T, D)
        if self.text_pooler is not None and cond is not None and cond.text is not None:
            text = text_tokens(cond, batch, self.text_channels)
            c = c + self.text_pooler(masked_mean(*text))[:, None]  # (B, T, D)
        return c

    def _labels(self, cond: Optional[Conditioning], batch: int, frames: int) -> torch.Tensor:
        if cond is None or cond.labels is None:
            raise ValueError(f"this W.A.L.T is class-conditional ({self.num_classes} classes): "
                             "pass Conditioning(labels=...) (-1 for the null class)")
        labels = cond.labels
        if labels.shape == (batch,):
            return self.y_embedder(labels)[:, None]  # (B, 1, D), the same for every frame
        if labels.shape != (batch, frames):
            raise ValueError(f"labels must have shape (B,) or (B, T) = ({batch}, {frames}); got {tuple(labels.shape)}")
        return self.y_embedder(labels)  # (B, T, D): a label per frame (joint image-video training)

    def text_context(self, cond: Optional[Conditioning], batch: int) -> Text:
        """Projected text tokens (B, S, D) and their mask, or None (no text given)."""
        if self.caption_projection is None:
            return None
        text = text_tokens(cond, batch, self.text_channels)
        return None if text is None else (self.caption_projection(text[0]), text[1])

    def positions(self, frames: int, num_video: int, h: int, w: int) -> torch.Tensor:
        """Absolute position embeddings (T, h, w, D): spatial + temporal, the tables interpolated when the
        grid differs from pos_grid; the image frames after ``num_video`` take frame 0's temporal one."""
        spatial = resize_table(self.pos_embed_spatial[None], (1, h, w))[0]  # (h, w, D)
        temporal = resize_table(self.pos_embed_temporal[:, None, None], (num_video, 1, 1))[:, 0, 0]  # (Tv, D)
        if frames > num_video:
            temporal = torch.cat([temporal, temporal[:1].expand(frames - num_video, -1)])  # (T, D)
        return spatial[None] + temporal[:, None, None]  # (T, h, w, D)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        check_accepted(cond, self.accepts, type(self).__name__)
        B, C, T, H, W = x.shape
        p, D = self.patch_size, self.hidden_size
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {C}")
        if H % p or W % p:
            raise ValueError(f"frame size {H}×{W} is not divisible by the patch size {p}")
        if not 0 <= num_images < T:
            raise ValueError(f"num_images={num_images} must be fewer than the {T} frames")
        h, w, num_video = H // p, W // p, T - num_images
        windows = self.config.windows((num_video, h, w))  # scaled to this grid (ConfigError if they do not fit)

        tok = self.x_embedder(self.inputs(x, cond)).view(B, T, h, w, D)  # (B, T, h, w, D)
        tok = tok + self.positions(T, num_video, h, w).to(tok.dtype)
        c = self.condition(t, cond, B, T)  # (B, T, D)
        mod = c[:, :, None, None]  # (B, T, 1, 1, D): one vector per frame
        if self.adaln_shared is not None:
            mod = self.adaln_shared(mod)  # A^1 (B, T, 1, 1, 6D) and SiLU(c), read by every layer
        text = self.text_context(cond, B)
        for block in self.blocks:
            tok = block(tok, mod, windows, num_video, text)  # (B, T, h, w, D)
        out = self.final_layer(tok.view(B, T, h * w, D), c[:, :, None])  # (B, T, N, p·p·C_out)
        return unpatchify(out, h, w, p, 1, self.out_channels)  # (B, C_out, T, H, W)

    # ------------------------------------------------------------------ another grid
    @torch.no_grad()
    def regrid(self, pos_grid: tuple[int, int, int]) -> "Walt":
        """Make ``pos_grid`` (a latent t×h×w) this model's own grid: the absolute and relative tables
        are replaced by their interpolations and the windows by the scaled ones, in place (for a model
        fine-tuned and saved at another size or aspect ratio). At the new grid the output is unchanged."""
        cfg, p = self.config, self.patch_size
        new = dataclasses.replace(cfg, pos_grid=tuple(pos_grid))
        grid = new.token_grid()
        sw, stw = cfg.windows(grid)
        new = dataclasses.replace(new, spatial_window=None if sw[1:] == grid[1:] else sw[1:],
                                  spatiotemporal_window=None if cfg.spatiotemporal_window is None else stw)
        if new.train_windows() != (sw, stw):
            raise ValueError(f"regrid: windows {sw}, {stw} at {tuple(pos_grid)} (patch {p}) do not round-trip")
        self.pos_embed_spatial = nn.Parameter(resize_table(self.pos_embed_spatial[None], (1, *grid[1:]))[0])
        self.pos_embed_temporal = nn.Parameter(
            resize_table(self.pos_embed_temporal[:, None, None], (grid[0], 1, 1))[:, 0, 0])
        for block in self.blocks:
            for layer, window in ((block.spatial, sw), (block.spatiotemporal, stw)):
                bias = layer.attn.relative_bias
                if bias is not None:
                    bias.relative_position_bias_table = nn.Parameter(
                        resize_relative_table(bias.relative_position_bias_table, bias.window, window))
                    bias.window = window
                layer.attn.window = window
        self.config, self.token_grid = new, grid
        return self
