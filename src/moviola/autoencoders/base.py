"""The Autoencoder contract every latent space in moviola follows.

``encode(video (B, 3, T, H, W) in [-1, 1]) -> latent (B, c, t, h, w)``, already normalized
(``(z - shift) * scale``), and ``decode`` undoes both. ``spatial_factor`` and
``temporal_factor`` say how much smaller the latent is; ``latent_channels`` is ``c``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class AutoencoderOutput(NamedTuple):
    """What a trainable autoencoder's ``forward`` returns: the reconstruction and the posterior."""

    reconstruction: torch.Tensor  # (B, 3, T, H, W)
    mean: torch.Tensor  # (B, c, t, h, w), un-normalized
    logvar: torch.Tensor  # (B, c, t, h, w)


class Autoencoder(nn.Module):
    latent_channels: int
    spatial_factor: int = 1
    temporal_factor: int = 1
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    # each latent frame is the encoding of its pixel frame(s) alone (a frame-wise encoder); a causal VAE's
    # later latent frames also see earlier frames, so only its first latent frame is an image's encoding
    encodes_frames_alone: bool = True
    # each pixel frame is decoded from its own latent frame alone (a frame-wise decoder); a causal or temporal
    # decoder mixes latent frames, so a long latent decoded piece by piece needs the frames before each piece
    decodes_frames_alone: bool = True

    def encode(self, video: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(c, t, h, w) of the latent of a video with this many frames and this size."""
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(f"frame size {height}×{width} is not divisible by the autoencoder's "
                             f"spatial factor {self.spatial_factor}")
        return (self.latent_channels, frames // self.temporal_factor,
                height // self.spatial_factor, width // self.spatial_factor)
