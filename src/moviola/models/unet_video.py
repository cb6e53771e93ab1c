"""What the U-Net video families share (Video LDM, VideoCrafter): Stable Diffusion's U-Net (nn/unet.py) run on
the T frames of each clip as a batch of images, with temporal layers placed by its hook.

``UNetVideoModel`` builds the U-Net from a family's ``UNetDims`` and hook, and holds the denoiser protocol's
shared parts: the input checks, per-frame timesteps, the class embedding, the clip's text (repeated for each
of its frames), ``parameter_groups`` (a family names its temporal modules) and the frame-batch round trip.
A family adds its temporal layers and its own conditions (Video LDM: given frames into the temporal layers,
a low-resolution video, a noise level; VideoCrafter: the frame rate, given frames along channels).

Temporal guidance (VideoCrafter's ``unconditional_guidance_scale_temporal``, diffusion/guidance.py) needs the model
without its temporal attention: ``with model.skipping_temporal_attention(mask): model(x, t, cond)`` runs the
examples where the (B,) bool ``mask`` holds (or all, for ``True``) with every temporal attention layer passing its
input through; ``VideoState.skip_temporal_attention`` carries the mask to the layers. A model supports it
(``supports_temporal_guidance``) when its temporal attention layers honour that flag (their class sets
``honours_skip_temporal_attention``: VideoCrafter's; Video LDM's α-blended layers do not).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Union

import torch
from torch import nn

from moviola.conditioning import Conditioning, check_accepted
from moviola.config import ConditionsConfig
from moviola.models.base import stage_parameters
from moviola.nn import LabelEmbedder, text_tokens
from moviola.nn.unet import TimestepEmbedding, UNet2D, timestep_features


@dataclass
class VideoState:
    """What every temporal layer of one forward needs (the U-Net passes it to each, unchanged)."""

    frames: int  # frames per clip in the frame batch (B·frames, C, H, W), images included
    num_images: int = 0  # the last num_images frames of each clip are single images
    text: Optional[torch.Tensor] = None  # (B, L, D)
    text_mask: Optional[torch.Tensor] = None  # (B, L) bool
    context: Optional[list[torch.Tensor]] = None  # Video LDM: the given frames' features, one map per level
    # (B,) bool: the examples whose temporal attention layers pass their input through (temporal guidance's
    # extra branch); None: none. Set by UNetVideoModel.run_unet under skipping_temporal_attention()
    skip_temporal_attention: Optional[torch.Tensor] = None


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> the frame batch (B·T, C, H, W)."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


class UNetVideoModel(nn.Module):
    """The shared half of a U-Net video denoiser; a family sets the class attributes below and builds its U-Net
    with ``build_unet(hook)``."""

    family: ClassVar[str]
    display_name: ClassVar[str]  # in messages: "Video LDM", "VideoCrafter"
    temporal_names: ClassVar[tuple[str, ...]]  # module names whose parameters train.stage=temporal trains
    joint_images = True  # image frames bypass every temporal layer
    any_size = True  # convolutions, and attention without absolute positions: one set of weights for any frame size
    input_embedding = "unet.conv_in.weight"  # the layer --init-from copies by input_groups (training/trainer.py)

    def setup(self, cfg, conditions: ConditionsConfig, in_channels: int) -> None:
        """The attributes every U-Net family has; refuses a condition the family cannot take."""
        unsupported = [n for n in conditions.wanted() if n not in cfg.takes]
        if unsupported:
            raise ValueError(f"{self.display_name} does not take the condition(s) {unsupported}; it takes "
                             f"{sorted(cfg.takes)}")
        self.config, self.conditions, self.dims = cfg, conditions, cfg.dims()
        self.in_channels, self.learned_sigma = in_channels, cfg.learned_sigma
        self.out_channels = 2 * in_channels if cfg.learned_sigma else in_channels
        self.num_classes, self.text_channels = conditions.num_classes, conditions.text_channels

    def build_unet(self, in_channels: int, temporal: Optional[Callable], **image_attention) -> None:
        """``self.unet`` (spatial transformers at the attention resolutions, SD's mid block) and the class
        embedding added to its timestep embedding. ``image_attention``: nn/unet's dual cross-attention options
        (``image_cross_attention=True``, its scale), for a family with image tokens."""
        dims, levels = self.dims, range(len(self.dims.block_out_channels))
        down = tuple("CrossAttnDownBlock2D" if 2 ** i in dims.attention_resolutions else "DownBlock2D" for i in levels)
        up = tuple("CrossAttnUpBlock2D" if 2 ** i in dims.attention_resolutions else "UpBlock2D"
                   for i in reversed(levels))
        self.unet = UNet2D(
            in_channels=in_channels, out_channels=self.out_channels, block_out_channels=dims.block_out_channels,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            layers_per_block=dims.layers_per_block, attention_head_dim=dims.heads(),
            cross_attention_dim=self.text_channels, norm_num_groups=dims.norm_num_groups,
            transformer_layers_per_block=self.config.transformer_layers,
            use_linear_projection=dims.use_linear_projection, temporal=temporal, **image_attention)
        self.label_embedding = LabelEmbedder(self.num_classes, self.unet.time_embed_dim) if self.num_classes else None
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.embedding_table.weight, std=0.02)

    def build_fps_embedding(self) -> None:
        """``self.fps_embedding`` for a model with ``conditions.fps`` (else None): VideoCrafter's ``fps_embedding``,
        the timestep embedding's shape on the rate's sinusoidal features, added to the timestep embedding. Its
        output layer starts at zero (ours): a model warm-started from an image model is that model at any rate.
        Video LDM's interpolation model uses it as its level flag (docs/video_ldm.md)."""
        self.fps_embedding = None
        if not self.conditions.fps:
            return
        self.fps_embedding = TimestepEmbedding(self.dims.block_out_channels[0], self.unet.time_embed_dim)
        nn.init.zeros_(self.fps_embedding.linear_2.weight)
        nn.init.zeros_(self.fps_embedding.linear_2.bias)

    @classmethod
    def from_config(cls, cfg, conditions: ConditionsConfig, in_channels: int):
        """The denoiser protocol's constructor (models/base.py)."""
        return cls(cfg, conditions, in_channels)

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """``all``; ``temporal``: the family's temporal modules; ``spatial``: the rest (the image model)."""
        return stage_parameters(self, stage, self.is_temporal)

    @classmethod
    def is_temporal(cls, name: str) -> bool:
        return any(f".{part}." in f".{name}" for part in cls.temporal_names)

    # ------------------------------------------------------------------ temporal guidance
    @property
    def supports_temporal_guidance(self) -> bool:
        """Whether the model has temporal attention layers that can be skipped (``skipping_temporal_attention``)."""
        return any(getattr(m, "honours_skip_temporal_attention", False) for m in self.modules())

    @contextlib.contextmanager
    def skipping_temporal_attention(self, mask: Union[bool, torch.Tensor] = True):
        """Within the block, forwards skip the temporal attention layers of the examples where ``mask`` holds: a
        (B,) bool tensor over the forward's batch, or ``True`` for every example. The temporal convolutions and
        every other layer run as always. A model whose layers do not honour it raises a ValueError."""
        if not self.supports_temporal_guidance:
            raise ValueError(f"this {self.display_name} has no temporal attention it can skip: temporal guidance "
                             "needs VideoCrafter's temporal transformers")
        previous = getattr(self, "_skip_temporal_attention", None)
        self._skip_temporal_attention = mask
        try:
            yield self
        finally:
            self._skip_temporal_attention = previous

    def _skip_mask(self, batch: int, device: torch.device) -> Optional[torch.Tensor]:
        """The (B,) bool mask of ``skipping_temporal_attention`` for a forward of ``batch`` clips, or None."""
        mask = getattr(self, "_skip_temporal_attention", None)
        if mask is None or mask is False:
            return None
        if mask is True:
            return torch.ones(batch, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool or mask.shape != (batch,):
            raise ValueError(f"the temporal-attention skip mask must be a bool tensor of shape (B,) = ({batch},), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return mask

    # ------------------------------------------------------------------ forward pieces
    def check_input(self, x: torch.Tensor, cond: Optional[Conditioning], num_images: int) -> None:
        check_accepted(cond, self.accepts, type(self).__name__)
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels: x_t of shape (B, {self.in_channels}, T, H, W), "
                             f"got {tuple(x.shape)}")
        if not 0 <= num_images < x.shape[2]:
            raise ValueError(f"num_images={num_images} must be fewer than the {x.shape[2]} frames")

    def video_state(self, x: torch.Tensor, cond: Optional[Conditioning], num_images: int) -> VideoState:
        """The forward's input checks, then its ``VideoState``: the clip layout and the clip's text."""
        self.check_input(x, cond, num_images)
        text = self.clip_text(cond, x.shape[0])
        return VideoState(frames=x.shape[2], num_images=num_images, text=text[0] if text else None,
                          text_mask=text[1] if text else None)

    def frame_timesteps(self, t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """(B·T,): each frame's timestep (``t`` is (B,) or per frame (B, T))."""
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] == batch:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must have shape (B,) or (B, T) = ({batch}, {frames}), got {tuple(t.shape)}")
        return t.reshape(batch * frames)

    def class_embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """The class embedding per frame (B·T, E), or None for a model without classes."""
        if self.label_embedding is None:
            return None
        labels = None if cond is None else cond.labels
        if labels is None:
            raise ValueError(f"this {self.display_name} is class-conditional ({self.num_classes} classes): "
                             "pass Conditioning(labels=...) (-1 for the null class)")
        if labels.shape == (batch,):
            labels = labels[:, None].expand(batch, frames)
        if labels.shape != (batch, frames):
            raise ValueError(f"labels must have shape (B,) or (B, T) = ({batch}, {frames}); got {tuple(labels.shape)}")
        return self.label_embedding(labels.reshape(-1))

    def rate_embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """The frame-rate embedding per frame (B·T, E), or None for a model without ``conditions.fps``."""
        if self.fps_embedding is None:
            return None
        fps = None if cond is None else cond.fps
        if fps is None:
            raise ValueError(f"this {self.display_name} is conditioned on the frame rate (conditions.fps): pass "
                             f"Conditioning(fps=...) of shape (B,) = ({batch},), the clips' fps or frame stride")
        fps = torch.as_tensor(fps, device=self.unet.conv_in.weight.device)
        if fps.shape != (batch,) or fps.is_complex() or fps.dtype == torch.bool:
            raise ValueError(f"fps must be a real tensor of shape (B,) = ({batch},), got {tuple(fps.shape)} "
                             f"{fps.dtype}")
        features = timestep_features(fps, self.dims.block_out_channels[0], self.unet.flip_sin_to_cos,
                                     self.unet.freq_shift).to(self.unet.conv_in.weight.dtype)
        return self.fps_embedding(features).repeat_interleave(frames, dim=0)  # (B·T, E)

    def clip_text(self, cond: Optional[Conditioning], batch: int):
        """The clip's text tokens (B, L, D) and mask, or None for a model without text (required with it)."""
        if not self.text_channels:
            return None
        text = text_tokens(cond, batch, self.text_channels)
        if text is None:
            raise ValueError(f"this {self.display_name} is text-conditioned: pass Conditioning(text=..., "
                             "text_mask=...) (the empty prompt's embedding is the null condition)")
        return text

    def run_unet(self, inputs: torch.Tensor, t: torch.Tensor, emb: Optional[torch.Tensor], video: VideoState,
                 shape: tuple[int, ...], image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The U-Net on the frame batch ``inputs`` (B·T, C_in, H, W), each frame with its clip's text (and image
        tokens ``image`` (B·T, Q, D) for a U-Net with dual cross-attention) -> (B, C_out, T, H, W); ``shape`` is
        x_t's."""
        B, _, T, H, W = shape
        context = context_mask = None
        if video.text is not None:  # the clip's text, for each of its frames
            context = video.text.repeat_interleave(T, dim=0)
            context_mask = None if video.text_mask is None else video.text_mask.repeat_interleave(T, dim=0)
        extra = {} if image is None else {"image_context": image}
        skip = self._skip_mask(B, inputs.device)
        if skip is not None:  # temporal guidance's branch: its temporal attention layers pass their input through
            video.skip_temporal_attention = skip
        out = self.unet(inputs, self.frame_timesteps(t, B, T), context=context, context_mask=context_mask,
                        emb=emb, video=video, **extra)  # (B·T, C_out, H, W)
        return out.view(B, T, self.out_channels, H, W).transpose(1, 2)
