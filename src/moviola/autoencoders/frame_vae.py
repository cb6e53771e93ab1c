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

from moviola.autoencoders.base import Autoencoder, AutoencoderOutput


class FrameVAE(Autoencoder):
    def __init__(self, vae, scaling_factor: Optional[float] = None, shift_factor: Optional[float] = None,
                 chunk_frames: int = 16):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)  # a loaded VAE is frozen; FrameVAE.new trains
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
        # low_cpu_mem_usage=False: the same load, without diffusers' advice to install accelerate on every call
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
        return cls(vae, **kwargs)

    @classmethod
    def new(cls, base_channels: int = 64, channel_mults=(1, 2, 2, 4), num_res_blocks: int = 2,
            latent_channels: int = 4, norm_groups: int = 32, chunk_frames: int = 16) -> "FrameVAE":
        """A new, randomly initialized SD-style KL autoencoder (diffusers' AutoencoderKL), to train."""
        from diffusers import AutoencoderKL

        levels = len(channel_mults)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                            up_block_types=("UpDecoderBlock2D",) * levels,
                            block_out_channels=tuple(base_channels * m for m in channel_mults),
                            layers_per_block=num_res_blocks, latent_channels=latent_channels,
                            norm_num_groups=norm_groups, scaling_factor=1.0)
        out = cls(vae, chunk_frames=chunk_frames)
        out.vae.requires_grad_(True)
        return out

    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: Optional[torch.Generator] = None) -> AutoencoderOutput:
        """Reconstruct every frame through the posterior (with gradients), for training."""
        frames, B, T = self._frames(video)
        dist = self.vae.encode(frames).latent_dist
        z = dist.mean
        if sample:
            noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)  # CPU generator, any device
            z = z + dist.std * noise
        recon = self.vae.decode(z).sample
        return AutoencoderOutput(self._unframes(recon, B, T), self._unframes(dist.mean, B, T),
                                 self._unframes(dist.logvar, B, T))

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (the adaptive adversarial weight's reference)."""
        return self.vae.decoder.conv_out.weight

    @torch.no_grad()
    def measure_latent_stats(self, videos, generator: Optional[torch.Generator] = None) -> tuple[float, float]:
        """Set ``shift_factor`` / ``scaling_factor`` (one number each, as SD3) so the latents of
        ``videos`` (an iterable of (B, 3, T, H, W) batches) have mean 0 and std 1. Returns (mean, std)."""
        total = total_sq = 0.0
        count = 0
        for video in videos:
            frames, _, _ = self._frames(video.to(self.vae.dtype))
            z = self.vae.encode(frames).latent_dist.mean.double()
            total += float(z.sum())
            total_sq += float((z * z).sum())
            count += z.numel()
        if count == 0:
            raise ValueError("measure_latent_stats got no videos")
        mean = total / count
        std = max((total_sq / count - mean * mean) ** 0.5, 1e-8)
        self.shift_factor, self.scaling_factor = mean, 1.0 / std
        self.vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
        return mean, std

    def save_pretrained(self, path) -> None:
        """diffusers' format (config.json + diffusion_pytorch_model.safetensors), with the measured
        normalization in its config: loadable by FrameVAE.from_pretrained and by diffusers."""
        self.vae.save_pretrained(str(path), safe_serialization=True)

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
