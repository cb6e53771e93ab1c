"""``moviola.load_pipeline``: the autoencoder, denoiser, schedule (and text encoder) of a checkpoint as a Pipeline.

The pipeline itself (conditions → denoise → decode) is ``pipelines/base.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from moviola.autoencoders import build_autoencoder
from moviola.diffusion import build_schedule
from moviola.io.checkpoint import resolve_checkpoint
from moviola.models.loading import load_model, load_run_config
from moviola.pipelines.base import Conditions, ImageLike, Pipeline
from moviola.utils import resolve_device

__all__ = ["Conditions", "ImageLike", "Pipeline", "load_pipeline"]


def load_pipeline(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device, None] = None) -> Pipeline:
    """Autoencoder + denoiser + diffusion of a checkpoint (or a run directory's newest one)."""
    dev = resolve_device("auto" if device is None else device)
    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt)
    ae = build_autoencoder(cfg.autoencoder)
    model = load_model(ckpt, weights=weights, device=dev, latent_channels=ae.latent_channels)
    return Pipeline(model, ae, build_schedule(cfg.diffusion), cfg, device=dev)
