"""VideoCrafter's temporal layers as the U-Net's hook places them (nn/unet.py, ``temporal=``).

After each resnet ModelScope's temporal convolution (``temporal_conv``), after each spatial transformer a
temporal transformer, and one after conv_in (``addition_attention``). Unlike Video LDM's there is no α-blend:
each is a plain residual whose last layer starts at zero. The hook's layers are the nn/ modules themselves,
subclassed only to take the forward's ``VideoState``, so their parameters keep diffusers' names
(``down_blocks.0.temp_convs.0.conv1.0.weight``, ``transformer_in.proj_in.weight``, ...) and a diffusers
``UNet3DConditionModel`` state dict loads unchanged.
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
    cross-attention it attends to the clip's text."""

    def forward(self, h: torch.Tensor, video: VideoState) -> torch.Tensor:  # type: ignore[override]
        text = {} if self.context_dim is None else dict(context=video.text, context_mask=video.text_mask)
        return super().forward(h, video.frames, num_images=video.num_images, **text)
