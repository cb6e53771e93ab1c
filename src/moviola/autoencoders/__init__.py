"""Autoencoders: identity (pixel space), the frame-wise SD VAE, the causal 3-D VAE, Video LDM's temporal decoder."""
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
    if cfg.kind == "temporal_decoder":
        import json
        from pathlib import Path

        from moviola.autoencoders.frame_vae import FrameVAE
        from moviola.autoencoders.temporal_decoder import TemporalDecoderVAE

        path = Path(cfg.path)
        meta = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        if meta.get("_class_name") == "TemporalDecoderVAE":  # an exported one
            return TemporalDecoderVAE.from_pretrained(path, finetune_spatial=cfg.finetune_spatial)
        base = FrameVAE.from_pretrained(path, scaling_factor=cfg.scaling_factor, shift_factor=cfg.shift_factor,
                                        chunk_frames=cfg.chunk_frames)  # a frame VAE to add temporal layers to
        return TemporalDecoderVAE.from_frame_vae(base, temporal_kernel=cfg.temporal_kernel,
                                                 attention=cfg.temporal_attention,
                                                 finetune_spatial=cfg.finetune_spatial, copy_base=False)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}")


__all__ = ["Autoencoder", "IdentityAutoencoder", "build_autoencoder"]
