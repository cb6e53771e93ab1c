"""VideoCrafter's temporal layers as the U-Net's hook places them (nn/unet.py, ``temporal=``).

After each resnet ModelScope's temporal convolution (``temporal_conv``), after each spatial transformer a
temporal transformer, and one after conv_in (``addition_attention``). Unlike Video LDM's there is no α-blend:
each is a plain residual whose last layer starts at zero. The hook's layers are the nn/ modules themselves,
subclassed only to take the forward's ``VideoState``, so their parameters keep diffusers' names
(``down_blocks.0.temp_convs.0.conv1.0.weight``, ``transformer_in.proj_in.weight``, ...) and a diffusers
``UNet3DConditionModel`` state dict loads unchanged.

Temporal guidance's branch (``VideoState.skip_temporal_attention``, models/unet_video.py): a temporal transformer
returns its input unchanged for the examples the mask names, as VideoCrafter's ``no_temporal_attn`` is meant to;
the temporal convolutions run as always.
"""
from __future__ import annotations

import torch

from moviola.models.unet_video import VideoState
from moviola.nn.temporal import TemporalConvLayer, TemporalTransformer


class VideoConv(TemporalConvLayer):
    """The temporal convolution after a resnet: ``h = layer(h, video)``."""

    def forward(self, h: torch.Tensor, video: VideoState) -> torch.Tensor:  # type: ignore[override]
        return super().forward(h, video.frames, num_images=video.num_images)


class VideoTransformer(TemporalTransformer):
    """The temporal transformer after a spatial transformer or conv_in: ``h = layer(h, video)``; with text
    cross-attention it attends to the clip's text. The clips ``video.skip_temporal_attention`` names get ``h``
    back unchanged (temporal guidance)."""

    honours_skip_temporal_attention = True  # UNetVideoModel.supports_temporal_guidance

    def forward(self, h: torch.Tensor, video: VideoState) -> torch.Tensor:  # type: ignore[override]
        skip = video.skip_temporal_attention  # (B,) bool or None
        if skip is not None and bool(skip.all()):
            return h
        text = {} if self.context_dim is None else dict(context=video.text, context_mask=video.text_mask)
        out = super().forward(h, video.frames, num_images=video.num_images, **text)
        if skip is None or not bool(skip.any()):
            return out
        keep = (~skip).repeat_interleave(video.frames).view(-1, 1, 1, 1)  # (B·T, 1, 1, 1): frames of kept clips
        return torch.where(keep, out, h)
