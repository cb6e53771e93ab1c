"""Autoencoders: identity (pixel space) and the frame-wise SD VAE."""
from __future__ import annotations

from moviola.autoencoders.base import Autoencoder
from moviola.autoencoders.identity import IdentityAutoencoder


def build_autoencoder(cfg) -> Autoencoder:
    """The autoencoder an ``AutoencoderConfig`` describes."""
    if cfg.kind == "identity":
        return IdentityAutoencoder()
    if cfg.kind == "frame_vae":
        from moviola.autoencoders.frame_vae import FrameVAE

        return FrameVAE.from_pretrained(cfg.path, scaling_factor=cfg.scaling_factor,
                                        shift_factor=cfg.shift_factor, chunk_frames=cfg.chunk_frames)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}")


__all__ = ["Autoencoder", "IdentityAutoencoder", "build_autoencoder"]
