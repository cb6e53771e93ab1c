"""VideoCrafter 1 / 2 (Chen et al. 2023, 2024) and ModelScope T2V (Wang et al. 2023): Stable Diffusion's U-Net
with plain-residual temporal layers.

- The spatial backbone is Stable Diffusion's U-Net (nn/unet.py, diffusers' parameter names); it sees the T
  frames of each clip as a batch of images, each with its own timestep (per-frame ``t``), the clip's text
  through its cross-attention.
- Temporal layers (models/videocrafter/blocks.py): ModelScope's 4-layer temporal convolution after each
  resnet (``temporal_conv``: VideoCrafter2, ModelScope), a temporal transformer after each spatial
  transformer and one after conv_in (``addition_attention``); optional learned relative positions (VC1), a
  causal mask, text cross-attention. Their last layers start at zero, so the untrained model is its spatial
  U-Net, frame by frame. Their names are diffusers' ``UNet3DConditionModel``'s (interop/diffusers_unet3d.py).
- Conditions: the frame rate (``conditions.fps``: sinusoidal features → a 2-layer MLP shaped like the
  timestep embedding's, added to it, as VideoCrafter's ``fps_cond``) and class labels are added to the
  timestep embedding; given frames ``(m ∘ z, m)`` are concatenated to x_t along channels (DynamiCrafter's
  image latent, ``conditions.context_frames``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.conditioning import Conditioning
from moviola.config import ConditionsConfig, VideoCrafterConfig
from moviola.models.unet_video import UNetVideoModel, VideoState, to_frames
from moviola.models.videocrafter.blocks import VideoConv, VideoTransformer
from moviola.nn import with_context
from moviola.nn.unet import TimestepEmbedding, timestep_features


class VideoCrafter(UNetVideoModel):
    """VideoCrafter denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    Build one with ``VideoCrafter.from_config(cfg, conditions, in_channels)``; ``model.unet`` is the U-Net with
    its temporal layers (diffusers' ``UNet3DConditionModel`` names).
    """

    family = "videocrafter"
    display_name = "VideoCrafter"
    temporal_names = ("temp_convs", "temp_attentions", "transformer_in")  # what train.stage=temporal trains

    def __init__(self, cfg: VideoCrafterConfig, conditions: ConditionsConfig = ConditionsConfig(),
                 in_channels: int = 4):
        super().__init__()
        if not cfg.temporal_self_attention_only and not conditions.text_channels:
            raise ValueError("model.temporal_self_attention_only=false cross-attends to the text: set "
                             "conditions.text_channels")
        self.setup(cfg, conditions, in_channels)
        self.context_frames, self.fps = conditions.context_frames, conditions.fps
        self.accepts = frozenset(({"labels"} if self.num_classes else set())
                                 | ({"text", "text_mask"} if self.text_channels else set())
                                 | ({"context", "context_mask"} if self.context_frames else set())
                                 | ({"fps"} if self.fps else set()))
        channels = self.dims.block_out_channels
        self._heads = dict(zip(channels, self.dims.heads()))  # a temporal transformer has its level's heads
        self.build_unet(sum(n for _, n in self.input_groups(cfg, conditions, in_channels)), self._temporal_layer)
        # VideoCrafter's fps_embedding: the timestep embedding's shape, on the fps value's sinusoidal features.
        # Its output layer starts at zero (ours): a model warm-started from an image model is that model at any fps.
        self.fps_embedding = TimestepEmbedding(channels[0], self.unet.time_embed_dim) if self.fps else None
        if self.fps_embedding is not None:
            nn.init.zeros_(self.fps_embedding.linear_2.weight)
            nn.init.zeros_(self.fps_embedding.linear_2.bias)

    def _temporal_layer(self, kind: str, channels: int, path: str) -> Optional[nn.Module]:
        """The U-Net hook: the temporal layer after the spatial layer at ``path`` ("input": after conv_in), or None."""
        cfg, groups = self.config, self.dims.norm_num_groups
        if kind == "resnet":
            return VideoConv(channels, groups) if cfg.temporal_conv else None
        if kind == "input" and not cfg.addition_attention:
            return None
        if kind == "input":
            heads, head_dim = cfg.input_attention_heads, cfg.input_head_channels()
        else:  # after a spatial transformer: that level's heads
            heads = self._heads[channels]
            head_dim = channels // heads
        return VideoTransformer(
            channels, groups, heads, head_dim, num_layers=cfg.transformer_layers,
            context_dim=None if cfg.temporal_self_attention_only else self.text_channels,
            relative_position=cfg.relative_position, temporal_length=cfg.temporal_length,
            causal=cfg.causal_attention)

    @staticmethod
    def input_groups(cfg: VideoCrafterConfig, conditions: ConditionsConfig, in_channels: int) -> list[tuple[str, int]]:
        """The channel groups of ``unet.conv_in``'s input: x_t, then (m ∘ z, m) with context frames."""
        return [("x_t", in_channels)] + ([("context", in_channels + 1)] if conditions.context_frames else [])

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        self.check_input(x, cond, num_images)
        B, C, T, H, W = x.shape
        text = self.clip_text(cond, B)
        video = VideoState(frames=T, num_images=num_images, text=text[0] if text else None,
                           text_mask=text[1] if text else None)
        inputs = to_frames(with_context(x, cond) if self.context_frames else x)  # (B·T, C_in, H, W)
        return self.run_unet(inputs, t, self._embedding(cond, B, T), video, x.shape)

    def _embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """What is added to the timestep embedding, per frame (B·T, E): the class and the frame rate."""
        emb = self.class_embedding(cond, batch, frames)
        if self.fps_embedding is not None:
            fps = None if cond is None else cond.fps
            if fps is None:
                raise ValueError("this VideoCrafter is conditioned on the frame rate (conditions.fps): pass "
                                 f"Conditioning(fps=...) of shape (B,) = ({batch},), the clips' fps or frame stride")
            fps = torch.as_tensor(fps, device=self.unet.conv_in.weight.device)
            if fps.shape != (batch,) or fps.is_complex() or fps.dtype == torch.bool:
                raise ValueError(f"fps must be a real tensor of shape (B,) = ({batch},), got {tuple(fps.shape)} "
                                 f"{fps.dtype}")
            features = timestep_features(fps, self.dims.block_out_channels[0], self.unet.flip_sin_to_cos,
                                         self.unet.freq_shift).to(self.unet.conv_in.weight.dtype)
            rate = self.fps_embedding(features).repeat_interleave(frames, dim=0)  # (B·T, E)
            emb = rate if emb is None else emb + rate
        return emb
