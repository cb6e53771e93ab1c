"""``moviola.load_pipeline``: the autoencoder, denoiser, schedule (and text and image encoders) of a checkpoint as a
Pipeline.

The pipeline itself (conditions → denoise → decode) is ``pipelines/base.py``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch

from moviola.autoencoders import build_autoencoder
from moviola.conditioning.image import check_image_encoder
from moviola.config import ConfigError
from moviola.diffusion import build_schedule
from moviola.io.checkpoint import resolve_checkpoint
from moviola.models.loading import load_model, load_run_config
from moviola.pipelines.base import IMAGE_ENCODER_HINT, Conditions, ImageLike, Pipeline
from moviola.utils import resolve_device

__all__ = ["Conditions", "ImageLike", "Pipeline", "load_pipeline"]


def load_pipeline(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device, None] = None,
                  image_encoder: Union[str, Path, None] = None) -> Pipeline:
    """Autoencoder + denoiser + diffusion of a checkpoint (or a run directory's newest one).

    A model that reads image tokens (``conditions.image``) takes its frozen image encoder from the checkpoint's
    ``image.encoder``, or from ``image_encoder`` (a local CLIP vision directory: where that encoder is on this
    machine); its directory and token width are checked here, before any weights load (a one-line ConfigError),
    and its weights load on the first ``image=``. A checkpoint without one (converted from the official weights)
    loads, and samples from prompts, or from ``Conditioning.image_tokens`` through ``denoise``."""
    dev = resolve_device("auto" if device is None else device)
    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt)
    if image_encoder is not None:
        if not cfg.conditions.image:
            raise ConfigError(f"image_encoder={str(image_encoder)!r}: checkpoint {ckpt} reads no image tokens (it was "
                              "trained without conditions.image): leave image_encoder out")
        cfg = dataclasses.replace(cfg, image=dataclasses.replace(
            cfg.image, encoder=str(Path(image_encoder).expanduser().absolute())))
    if cfg.conditions.image and cfg.image.encoder is not None:
        try:
            check_image_encoder(cfg)  # its directory and token width, no weights: before anything loads
        except ConfigError as e:
            raise ConfigError(f"checkpoint {ckpt}: {e}; {IMAGE_ENCODER_HINT}") from None
    ae = build_autoencoder(cfg.autoencoder)
    model = load_model(ckpt, weights=weights, device=dev, latent_channels=ae.latent_channels)
    return Pipeline(model, ae, build_schedule(cfg.diffusion), cfg, device=dev)
