"""A frame-wise VAE: diffusers' ``AutoencoderKL`` (an SD VAE) applied to each frame.

The weights come from a local diffusers-format directory (``config.json`` +
``diffusion_pytorch_model.safetensors``); nothing is downloaded. Latents are normalized with
the VAE's own ``scaling_factor`` (0.18215 for SD 1.x, read from its config, never hard-coded)
and optional ``shift_factor``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from moviola.autoencoders.base import Autoencoder


class FrameVAE(Autoencoder):
    def __init__(self, vae, scaling_factor: Optional[float] = None, shift_factor: Optional[float] = None,
                 chunk_frames: int = 16):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else cfg.scaling_factor)
        sf = shift_factor if shift_factor is not None else getattr(cfg, "shift_factor", None)
        self.shift_factor = float(sf or 0.0)
        self.chunk_frames = chunk_frames

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "FrameVAE":
        from diffusers import AutoencoderKL

        path = Path(path)
        if not (path / "config.json").is_file():
            sub = path / "vae"
            if (sub / "config.json").is_file():
                path = sub
            else:
                raise FileNotFoundError(
                    f"no diffusers AutoencoderKL at {path}: expected {path}/config.json (or a vae/ "
                    "subfolder), e.g. a local copy of stabilityai/sd-vae-ft-ema")
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        return cls(vae, **kwargs)

    def _frames(self, video: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        B, C, T, H, W = video.shape
        return video.transpose(1, 2).reshape(B * T, C, H, W), B, T  # (B·T, C, H, W)

    def _unframes(self, x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        BT, C, H, W = x.shape
        return x.reshape(B, T, C, H, W).transpose(1, 2)  # (B, C, T, H, W)

    @torch.no_grad()
    def encode(self, video, sample=False, generator=None):
        frames, B, T = self._frames(video)
        parts = []
        for chunk in frames.split(self.chunk_frames):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            parts.append(dist.sample(generator) if sample else dist.mean)
        z = torch.cat(parts)
        return self._unframes((z.float() - self.shift_factor) * self.scaling_factor, B, T)

    @torch.no_grad()
    def decode(self, latent):
        z, B, T = self._frames(latent)
        z = z / self.scaling_factor + self.shift_factor
        parts = [self.vae.decode(chunk.to(self.vae.dtype)).sample for chunk in z.split(self.chunk_frames)]
        return self._unframes(torch.cat(parts).float(), B, T)
