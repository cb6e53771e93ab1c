"""Autoencoders: identity (pixel space), the frame-wise SD VAE and the causal 3-D VAE."""
from __future__ import annotations

from moviola.autoencoders.base import Autoencoder
from moviola.autoencoders.identity import IdentityAutoencoder


def build_autoencoder(cfg) -> Autoencoder:
    """The autoencoder an ``AutoencoderConfig`` describes."""
    if cfg.kind == "identity":
        return IdentityAutoencoder()
    if cfg.kind == "frame_vae":
        from moviola.autoencoders.frame_vae import FrameVAE

        if cfg.path is None:  # a new one, for moviola train-vae
            return FrameVAE.new(cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.latent_channels,
                                cfg.norm_groups, chunk_frames=cfg.chunk_frames)
        return FrameVAE.from_pretrained(cfg.path, scaling_factor=cfg.scaling_factor,
                                        shift_factor=cfg.shift_factor, chunk_frames=cfg.chunk_frames)
    if cfg.kind == "causal_vae":
        from moviola.autoencoders.causal_vae import CausalVAE

        if cfg.path is None:  # a new one, for moviola train-vae
            levels = len(cfg.channel_mults)
            return CausalVAE(base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                             num_res_blocks=cfg.num_res_blocks, temporal_downsample=cfg.temporal_downsample,
                             spatial_downsample=(True,) * (levels - 1), latent_channels=cfg.latent_channels,
                             norm_groups=cfg.norm_groups, chunk_frames=cfg.chunk_frames)
        # a directory written by CausalVAE.save_pretrained (config.json + model.safetensors)
        return CausalVAE.from_pretrained(cfg.path, chunk_frames=cfg.chunk_frames)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}")


__all__ = ["Autoencoder", "IdentityAutoencoder", "build_autoencoder"]
