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
  image latent, ``conditions.context_frames``; ``model.image_concat=false`` leaves them out).
- Image-to-video (VideoCrafter1, ``model.image_encoder``): image tokens — from a small trainable
  ``PatchImageEncoder`` on the given first frame's ``(m ∘ z, m)`` (``latent``: context frame 0), or a frozen
  encoder's ``Conditioning.image_tokens`` (``tokens``: CLIP) — go through a Perceiver ``Resampler``
  (``image_proj_model``, VideoCrafter's name) to ``resampler_queries`` tokens of the text's width, the same for
  every frame of the clip, into a second cross-attention beside the text's in every spatial transformer (shared
  query, ``to_k_ip``/``to_v_ip``; nn/unet.py), added × ``image_scale`` (× DynamiCrafter's learned gate). With
  context frames too it is DynamiCrafter's "hybrid". ``to_v_ip`` starts at zero (ours): the untrained image
  branch adds nothing, so a model warm-started from a text-to-video one is that model until it learns.
  The null image: an example with no frame 0 given, or with no / all-zero image tokens, and the trailing
  single images of a joint batch (frames of other clips), get all-zero resampled tokens, which through the
  bias-free ``to_k_ip``/``to_v_ip`` add exactly ``softmax(0) · 0 = 0``: that example's output is the text-only
  model's, bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from moviola.conditioning import Conditioning
from moviola.config import ConditionsConfig, VideoCrafterConfig
from moviola.models.unet_video import UNetVideoModel, to_frames
from moviola.models.videocrafter.blocks import VideoConv, VideoTransformer
from moviola.nn import PatchImageEncoder, with_context
from moviola.nn.resampler import Resampler
from moviola.nn.unet import UNetAttention


class VideoCrafter(UNetVideoModel):
    """VideoCrafter denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    Build one with ``VideoCrafter.from_config(cfg, conditions, in_channels)``; ``model.unet`` is the U-Net with
    its temporal layers (diffusers' ``UNet3DConditionModel`` names).
    """

    family = "videocrafter"
    display_name = "VideoCrafter"
    # what train.stage=temporal trains: the temporal layers and the frame-rate embedding (motion; it starts at
    # zero, so a temporal stage from an image model must train it to learn speed)
    temporal_names = ("temp_convs", "temp_attentions", "transformer_in", "fps_embedding")

    def __init__(self, cfg: VideoCrafterConfig, conditions: ConditionsConfig = ConditionsConfig(),
                 in_channels: int = 4):
        super().__init__()
        if not cfg.temporal_self_attention_only and not conditions.text_channels:
            raise ValueError("model.temporal_self_attention_only=false cross-attends to the text: set "
                             "conditions.text_channels")
        cfg.check_image(conditions)
        self.setup(cfg, conditions, in_channels)
        self.context_frames, self.fps = conditions.context_frames, conditions.fps
        self.image_mode = cfg.image_encoder  # none | latent | tokens
        self.concat_context = self.context_frames and cfg.image_concat
        self.accepts = frozenset(({"labels"} if self.num_classes else set())
                                 | ({"text", "text_mask"} if self.text_channels else set())
                                 | ({"context", "context_mask"} if self.context_frames else set())
                                 | ({"fps"} if self.fps else set())
                                 | ({"image_tokens"} if self.image_mode == "tokens" else set()))
        channels = self.dims.block_out_channels
        self._heads = dict(zip(channels, self.dims.heads()))  # a temporal transformer has its level's heads
        self.build_unet(sum(n for _, n in self.input_groups(cfg, conditions, in_channels)), self._temporal_layer)
        self.build_fps_embedding()  # VideoCrafter's fps_embedding (models/unet_video.py)
        self._build_image_branch(cfg, in_channels)

    def _build_image_branch(self, cfg: VideoCrafterConfig, in_channels: int) -> None:
        """``image_encoder`` (latent: the trainable patch encoder on frame 0's ``(m ∘ z, m)``) and
        ``image_proj_model`` (the resampler); ``to_v_ip`` of every image attention starts at zero."""
        self.image_encoder = self.image_proj_model = None
        if self.image_mode == "none":
            return
        width = cfg.image_token_width()
        if self.image_mode == "latent":
            self.image_encoder = PatchImageEncoder(in_channels + 1, width, cfg.image_patch, cfg.image_encoder_depth,
                                                   cfg.image_encoder_heads)
        self.image_proj_model = Resampler(
            dim=cfg.resampler_dim or self.text_channels, depth=cfg.resampler_depth,
            dim_head=cfg.resampler_head_channels, heads=cfg.resampler_heads, num_queries=cfg.resampler_queries,
            embedding_dim=width, output_dim=self.text_channels, ff_mult=4)
        for m in self.unet.modules():
            if isinstance(m, UNetAttention) and m.to_v_ip is not None:
                nn.init.zeros_(m.to_v_ip.weight)

    def build_unet(self, in_channels: int, temporal) -> None:
        """The shared U-Net; with an image branch, with nn/unet's dual cross-attention."""
        cfg = self.config
        if cfg.image_encoder == "none":
            return super().build_unet(in_channels, temporal)
        super().build_unet(in_channels, temporal, image_cross_attention=True,
                           image_cross_attention_scale=float(cfg.image_scale),
                           image_cross_attention_scale_learnable=cfg.image_scale_learnable)

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """``all``; ``temporal``: the temporal layers only; ``spatial``: everything else — the image branch
        included (``image_encoder``, ``image_proj_model`` and every ``to_k_ip``/``to_v_ip``/``alpha``): it is
        part of the image model, so VideoCrafter2's spatial-only fine-tune updates it and a temporal-only stage
        leaves it frozen."""
        return super().parameter_groups(stage)

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
        """The channel groups of ``unet.conv_in``'s input: x_t, then (m ∘ z, m) with context frames (unless
        ``model.image_concat=false``: then they enter through the image branch only)."""
        concat = conditions.context_frames and cfg.image_concat
        return [("x_t", in_channels)] + ([("context", in_channels + 1)] if concat else [])

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        video = self.video_state(x, cond, num_images)
        B, C, T, H, W = x.shape
        given = with_context(x, cond) if self.context_frames else None  # (x_t, m ∘ z, m), checked
        inputs = to_frames(given if self.concat_context else x)  # (B·T, C_in, H, W)
        emb = self._embedding(cond, B, T)
        if self.image_mode == "none":
            return self.run_unet(inputs, t, emb, video, x.shape)
        image = self.image_tokens(x, cond, given, num_images)  # (B·T, Q, text_channels)
        return self.run_unet(inputs, t, emb, video, x.shape, image)

    # ------------------------------------------------------------------ the image branch
    def image_tokens(self, x: torch.Tensor, cond: Optional[Conditioning], given: Optional[torch.Tensor],
                     num_images: int = 0) -> torch.Tensor:
        """The resampled image tokens of each frame (B·T, Q, text_channels): the clip's, repeated per frame;
        all zeros (the null image: no contribution) for a clip without an image and for the trailing
        ``num_images`` single images. ``given`` is ``with_context``'s (B, 2C+1, T, H, W) in latent mode."""
        B, C, T = x.shape[:3]
        if self.image_mode == "latent":
            frame = given[:, C:, 0]  # (B, C+1, H, W): (m ∘ z, m) of frame 0
            has_image = frame[:, C].flatten(1).ne(0).any(dim=1)  # (B,): frame 0 given (anywhere)
            # encoded whenever frames are passed, even if none is given, so every step trains the same parameters
            features = None if cond is None or cond.context is None else self.image_encoder(frame)
        else:
            features = None if cond is None else cond.image_tokens
            if features is not None:
                D = self.image_proj_model.embedding_dim
                if features.dim() != 3 or features.shape[0] != B or features.shape[2] != D or features.shape[1] < 1:
                    raise ValueError(f"image_tokens must have shape (B, L, model.image_token_dim) = ({B}, L, {D}), "
                                     f"got {tuple(features.shape)}")
                has_image = features.flatten(1).ne(0).any(dim=1)  # all zeros: the null image
        dtype = self.unet.conv_in.weight.dtype
        if features is None:  # no image anywhere in the batch
            return torch.zeros(B * T, self.image_proj_model.num_tokens, self.text_channels, device=x.device,
                               dtype=dtype)
        tokens = self.image_proj_model(features).to(dtype)  # (B, Q, D)
        frames = has_image[:, None].expand(B, T).clone()  # (B, T): which frames hear the clip's image
        if num_images:
            frames[:, T - num_images:] = False
        tokens = tokens.unsqueeze(1).expand(B, T, *tokens.shape[1:])  # (B, T, Q, D)
        tokens = torch.where(frames[:, :, None, None], tokens, torch.zeros((), dtype=dtype, device=x.device))
        return tokens.reshape(B * T, *tokens.shape[2:])

    def _embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """What is added to the timestep embedding, per frame (B·T, E): the class and the frame rate."""
        emb = self.class_embedding(cond, batch, frames)
        rate = self.rate_embedding(cond, batch, frames)
        if rate is not None:
            emb = rate if emb is None else emb + rate
        return emb
