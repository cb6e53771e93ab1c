"""Video LDM (Blattmann et al. 2023, "Align your Latents"): an image LDM U-Net turned into a video model by
temporal layers after its spatial layers (docs/video_ldm.md).

- The spatial backbone is Stable Diffusion's U-Net (nn/unet.py; its weights load from a diffusers
  ``UNet2DConditionModel``); it sees the T frames of each clip as a batch of images, each with its own
  timestep (per-frame ``t``), the clip's text through its cross-attention.
- Temporal layers (models/video_ldm/blocks.py): a 3-D convolution block after each resnet and a temporal
  attention after each spatial transformer (``temporal_layers``), mixed in by a learned α per layer; their
  last layers start at zero, so the untrained video model *is* the image model, frame by frame.
- Conditions: class labels and a noise level (the upsampler's noise augmentation) are added to the timestep
  embedding; given frames ``(m ∘ z, m)`` reach only the temporal layers (a learned downsampling, as the
  paper), so a frozen image backbone never sees them; a low-resolution video is resized to the latent size
  and concatenated along channels frame by frame (the temporally aligned upsampler).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moviola.conditioning import Conditioning, check_accepted
from moviola.config import ConditionsConfig, VideoLDMConfig
from moviola.models.video_ldm.blocks import ContextPyramid, TemporalMixer, VideoState
from moviola.nn import LabelEmbedder, TimestepEmbedder, text_tokens, with_context
from moviola.nn.unet import UNet2D

TEMPORAL_NAMES = ("temp_convs", "temp_attentions", "context_pyramid")  # what train.stage=temporal trains


class VideoLDM(nn.Module):
    """Video LDM denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    Build one with ``VideoLDM.from_config(cfg, conditions, in_channels)``; ``model.unet`` is the image U-Net
    (its spatial weights carry diffusers' names).
    """

    family = "video_ldm"
    joint_images = True  # image frames bypass every temporal layer

    def __init__(self, cfg: VideoLDMConfig, conditions: ConditionsConfig = ConditionsConfig(), in_channels: int = 4):
        super().__init__()
        unsupported = [n for n in conditions.wanted() if n not in cfg.takes]
        if unsupported:
            raise ValueError(f"Video LDM does not take the condition(s) {unsupported}; it takes {sorted(cfg.takes)}")
        if conditions.context_frames and cfg.temporal_layers == "none":
            raise ValueError("context frames reach Video LDM's temporal layers: model.temporal_layers=none has none")
        dims = cfg.dims()
        self.config, self.conditions, self.dims = cfg, conditions, dims
        self.in_channels, self.learned_sigma = in_channels, cfg.learned_sigma
        self.out_channels = 2 * in_channels if cfg.learned_sigma else in_channels
        self.num_classes, self.text_channels = conditions.num_classes, conditions.text_channels
        self.context_frames, self.low_res = conditions.context_frames, conditions.low_res
        self.accepts = frozenset(({"labels"} if self.num_classes else set())
                                 | ({"text", "text_mask"} if self.text_channels else set())
                                 | ({"context", "context_mask"} if self.context_frames else set())
                                 | ({"low_res"} if conditions.low_res else set())
                                 | ({"noise_level"} if conditions.noise_level else set()))
        channels = dims.block_out_channels
        levels = range(len(channels))
        down = tuple("CrossAttnDownBlock2D" if 2 ** i in dims.attention_resolutions else "DownBlock2D" for i in levels)
        up = tuple("CrossAttnUpBlock2D" if 2 ** i in dims.attention_resolutions else "UpBlock2D"
                   for i in reversed(levels))
        self.unet = UNet2D(
            in_channels=sum(n for _, n in self.input_groups(cfg, conditions, in_channels)),
            out_channels=self.out_channels, block_out_channels=channels, down_block_types=down,
            up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=dims.layers_per_block,
            attention_head_dim=dims.heads(), cross_attention_dim=self.text_channels,
            norm_num_groups=dims.norm_num_groups, transformer_layers_per_block=cfg.transformer_layers,
            use_linear_projection=dims.use_linear_projection,
            temporal=None if cfg.temporal_layers == "none" else self._temporal_layer)
        E = self.unet.time_embed_dim
        self.label_embedding = LabelEmbedder(self.num_classes, E) if self.num_classes else None
        self.noise_embedding = TimestepEmbedder(E) if conditions.noise_level else None
        self.context_pyramid = ContextPyramid(in_channels + 1, channels) if self.context_frames else None
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.embedding_table.weight, std=0.02)

    def _temporal_layer(self, kind: str, channels: int, path: str) -> Optional[TemporalMixer]:
        """The U-Net hook: the temporal layer after the spatial layer at ``path``, or None."""
        cfg = self.config
        wanted = {"resnet": cfg.temporal_layers in ("conv_attention", "conv"),
                  "attention": cfg.temporal_layers in ("conv_attention", "attention")}
        if not wanted.get(kind, False):
            return None
        level = _level(path, len(self.dims.block_out_channels))
        return TemporalMixer(
            kind, channels, self.dims.norm_num_groups, level=level,
            level_channels=self.dims.block_out_channels[level] if self.context_frames else None,
            alpha_init=cfg.alpha_init, learned=cfg.temporal_mix == "learned", window=cfg.temporal_window,
            text_channels=self.text_channels if cfg.temporal_text else None,
            head_channels=cfg.temporal_head_channels, kernel=cfg.temporal_kernel)

    @staticmethod
    def input_groups(cfg: VideoLDMConfig, conditions: ConditionsConfig, in_channels: int) -> list[tuple[str, int]]:
        """The channel groups of ``unet.conv_in``'s input: x_t, then the resized low-resolution video."""
        return [("x_t", in_channels)] + ([("low_res", in_channels)] if conditions.low_res else [])

    @classmethod
    def from_config(cls, cfg: VideoLDMConfig, conditions: ConditionsConfig, in_channels: int) -> "VideoLDM":
        """The denoiser protocol's constructor (models/base.py)."""
        return cls(cfg, conditions, in_channels)

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """``all``; ``temporal``: the temporal layers and the context downsampling (the paper's φ, trained
        with the image backbone frozen); ``spatial``: the rest (the image model θ)."""
        if stage == "all":
            return list(self.parameters())
        if stage not in ("temporal", "spatial"):
            raise ValueError(f"stage must be 'all', 'temporal' or 'spatial', got {stage!r}")
        temporal = stage == "temporal"
        return [p for name, p in self.named_parameters() if _is_temporal(name) == temporal]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        check_accepted(cond, self.accepts, type(self).__name__)
        B, C, T, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {C}")
        if not 0 <= num_images < T:
            raise ValueError(f"num_images={num_images} must be fewer than the {T} frames")
        text = self._text(cond, B)
        video = VideoState(frames=T, num_images=num_images, text=text[0] if text else None,
                           text_mask=text[1] if text else None)
        if self.context_pyramid is not None:
            given = with_context(x, cond)[:, C:]  # (B, C+1, T, H, W): m ∘ z, m (zeros when nothing is given)
            video.context = self.context_pyramid(_frames(given))
        inputs = _frames(self._inputs(x, cond))  # (B·T, C_in, H, W)
        context = context_mask = None
        if text is not None:  # the clip's text, for each of its frames
            context = text[0].repeat_interleave(T, dim=0)
            context_mask = None if text[1] is None else text[1].repeat_interleave(T, dim=0)
        out = self.unet(inputs, self._timesteps(t, B, T), context=context, context_mask=context_mask,
                        emb=self._embedding(cond, B, T), video=video)  # (B·T, C_out, H, W)
        return out.view(B, T, self.out_channels, H, W).transpose(1, 2)  # (B, C_out, T, H, W)

    def _inputs(self, x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
        if not self.low_res:
            return x
        low = None if cond is None else cond.low_res
        B, C, T, H, W = x.shape
        if low is None or low.dim() != 5 or low.shape[:3] != (B, C, T):
            raise ValueError(f"this Video LDM upsamples a low-resolution video: pass Conditioning(low_res=...) of "
                             f"shape (B, C, T, h, w) = ({B}, {C}, {T}, h, w), got "
                             f"{None if low is None else tuple(low.shape)}")
        up = F.interpolate(_frames(low.to(x.dtype)), size=(H, W), mode="bilinear", align_corners=False)
        return torch.cat([x, up.view(B, T, C, H, W).transpose(1, 2)], dim=1)  # (B, 2C, T, H, W)

    def _timesteps(self, t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """(B·T,): each frame's timestep (``t`` is (B,) or per frame (B, T))."""
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] == batch:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must have shape (B,) or (B, T) = ({batch}, {frames}), got {tuple(t.shape)}")
        return t.reshape(batch * frames)

    def _embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """What is added to the timestep embedding, per frame (B·T, E): the class and the noise level."""
        emb = None
        if self.label_embedding is not None:
            labels = None if cond is None else cond.labels
            if labels is None:
                raise ValueError(f"this Video LDM is class-conditional ({self.num_classes} classes): "
                                 "pass Conditioning(labels=...) (-1 for the null class)")
            if labels.shape == (batch,):
                labels = labels[:, None].expand(batch, frames)
            if labels.shape != (batch, frames):
                raise ValueError(f"labels must have shape (B,) or (B, T) = ({batch}, {frames}); "
                                 f"got {tuple(labels.shape)}")
            emb = self.label_embedding(labels.reshape(-1))
        if self.noise_embedding is not None:
            level = None if cond is None else cond.noise_level
            level = torch.zeros(batch, device=self.unet.conv_in.weight.device) if level is None else level
            if level.shape != (batch,):
                raise ValueError(f"noise_level must have shape (B,) = ({batch},), got {tuple(level.shape)}")
            noise = self.noise_embedding(level).repeat_interleave(frames, dim=0)
            emb = noise if emb is None else emb + noise
        return emb

    def _text(self, cond: Optional[Conditioning], batch: int):
        if not self.text_channels:
            return None
        text = text_tokens(cond, batch, self.text_channels)
        if text is None:
            raise ValueError("this Video LDM is text-conditioned: pass Conditioning(text=..., text_mask=...) "
                             "(the empty prompt's embedding is the null condition)")
        return text


def _frames(x: torch.Tensor) -> torch.Tensor:
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, C, H, W)


def _is_temporal(name: str) -> bool:
    return any(f".{part}." in f".{name}" for part in TEMPORAL_NAMES)


def _level(path: str, levels: int) -> int:
    """The U-Net level (0 = full resolution) a hook path ("down_blocks.1.temp_convs.0") sits at."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    return levels - 1  # the mid block
