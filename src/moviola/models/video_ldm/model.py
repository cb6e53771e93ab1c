"""Video LDM (Blattmann et al. 2023, "Align your Latents"): an image LDM U-Net turned into a video model by
temporal layers after its spatial layers (docs/video_ldm.md).

- The spatial backbone is Stable Diffusion's U-Net (nn/unet.py; its weights load from a diffusers
  ``UNet2DConditionModel``); it sees the T frames of each clip as a batch of images, each with its own
  timestep (per-frame ``t``), the clip's text through its cross-attention.
- Temporal layers (models/video_ldm/blocks.py): a 3-D convolution block after each resnet and a temporal
  attention after each spatial transformer (``temporal_layers``), mixed in by a learned α per layer; their
  last layers start at zero, so the untrained video model *is* the image model, frame by frame.
- Conditions: class labels, a noise level (the upsampler's noise augmentation) and the frame rate (the
  interpolation model's level flag: T → 4T on clips at stride 4, 4T → 16T at stride 1) are added to the timestep
  embedding; given frames ``(m ∘ z, m)`` reach only the temporal layers (a learned downsampling, as the
  paper), so a frozen image backbone never sees them; a low-resolution video is resized to the latent size
  and concatenated along channels frame by frame (the temporally aligned upsampler).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from moviola.conditioning import Conditioning
from moviola.config import ConditionsConfig, VideoLDMConfig
from moviola.models.unet_video import UNetVideoModel, to_frames
from moviola.models.video_ldm.blocks import ContextPyramid, TemporalMixer
from moviola.nn import TimestepEmbedder, with_context


class VideoLDM(UNetVideoModel):
    """Video LDM denoiser: ``model(x_t (B,C,T,H,W), t (B,) or (B,T), cond) -> (B, C or 2C, T, H, W)``.

    Build one with ``VideoLDM.from_config(cfg, conditions, in_channels)``; ``model.unet`` is the image U-Net
    (its spatial weights carry diffusers' names).
    """

    family = "video_ldm"
    display_name = "Video LDM"
    # the paper's φ; the frame-rate embedding too (new with the temporal layers: the interpolation model's level)
    temporal_names = ("temp_convs", "temp_attentions", "context_pyramid", "fps_embedding")

    def __init__(self, cfg: VideoLDMConfig, conditions: ConditionsConfig = ConditionsConfig(), in_channels: int = 4):
        super().__init__()
        if conditions.context_frames and cfg.temporal_layers == "none":
            raise ValueError("context frames reach Video LDM's temporal layers: model.temporal_layers=none has none")
        self.setup(cfg, conditions, in_channels)
        self.context_frames, self.low_res = conditions.context_frames, conditions.low_res
        self.accepts = frozenset(({"labels"} if self.num_classes else set())
                                 | ({"text", "text_mask"} if self.text_channels else set())
                                 | ({"context", "context_mask"} if self.context_frames else set())
                                 | ({"low_res"} if conditions.low_res else set())
                                 | ({"noise_level"} if conditions.noise_level else set())
                                 | ({"fps"} if conditions.fps else set()))
        self.build_unet(sum(n for _, n in self.input_groups(cfg, conditions, in_channels)),
                        None if cfg.temporal_layers == "none" else self._temporal_layer)
        self.noise_embedding = TimestepEmbedder(self.unet.time_embed_dim) if conditions.noise_level else None
        channels = self.dims.block_out_channels
        self.context_pyramid = ContextPyramid(in_channels + 1, channels) if self.context_frames else None
        self.build_fps_embedding()  # the interpolation model's level flag: the clips' rate (stride 4 or 1)

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

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                num_images: int = 0) -> torch.Tensor:
        """``num_images``: how many of the T frames, at the end, are single images (joint training)."""
        video = self.video_state(x, cond, num_images)
        B, C, T, H, W = x.shape
        if self.context_pyramid is not None:
            given = with_context(x, cond)[:, C:]  # (B, C+1, T, H, W): m ∘ z, m (zeros when nothing is given)
            video.context = self.context_pyramid(to_frames(given))
        return self.run_unet(to_frames(self._inputs(x, cond)), t, self._embedding(cond, B, T), video, x.shape)

    def _inputs(self, x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
        if not self.low_res:
            return x
        low = None if cond is None else cond.low_res
        B, C, T, H, W = x.shape
        if low is None or low.dim() != 5 or low.shape[:3] != (B, C, T):
            raise ValueError(f"this Video LDM upsamples a low-resolution video: pass Conditioning(low_res=...) of "
                             f"shape (B, C, T, h, w) = ({B}, {C}, {T}, h, w), got "
                             f"{None if low is None else tuple(low.shape)}")
        up = F.interpolate(to_frames(low.to(x.dtype)), size=(H, W), mode="bilinear", align_corners=False)
        return torch.cat([x, up.view(B, T, C, H, W).transpose(1, 2)], dim=1)  # (B, 2C, T, H, W)

    def _embedding(self, cond: Optional[Conditioning], batch: int, frames: int) -> Optional[torch.Tensor]:
        """What is added to the timestep embedding, per frame (B·T, E): the class, the noise level, the rate."""
        emb = self.class_embedding(cond, batch, frames)
        rate = self.rate_embedding(cond, batch, frames)
        if rate is not None:
            emb = rate if emb is None else emb + rate
        if self.noise_embedding is not None:
            level = None if cond is None else cond.noise_level
            level = torch.zeros(batch, device=self.unet.conv_in.weight.device) if level is None else level
            if level.shape != (batch,):
                raise ValueError(f"noise_level must have shape (B,) = ({batch},), got {tuple(level.shape)}")
            noise = self.noise_embedding(level).repeat_interleave(frames, dim=0)
            emb = noise if emb is None else emb + noise
        return emb


def _level(path: str, levels: int) -> int:
    """The U-Net level (0 = full resolution) a hook path ("down_blocks.1.temp_convs.0") sits at."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    return levels - 1  # the mid block
