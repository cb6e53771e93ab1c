"""``moviola.load_model``: the denoiser of a checkpoint directory."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from moviola.config import RunConfig, autoencoder_latent_channels, config_from_json
from moviola.io.checkpoint import (STEP_DIR, CheckpointError, check_kind, check_state_dict, load_weights,
                                   resolve_checkpoint, weights_name)
from moviola.models.registry import build_model
from moviola.utils import resolve_device


def load_run_config(ckpt: Path) -> RunConfig:
    """The config saved in a diffusion checkpoint directory (another kind is refused, naming what it is)."""
    ckpt = Path(ckpt)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" and STEP_DIR.match(ckpt.name) else ckpt
    check_kind(run, ("diffusion",), "a diffusion model")
    try:
        return config_from_json(ckpt / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"missing config.json in checkpoint {ckpt}") from None


def load_model(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device] = "cpu",
               latent_channels: Optional[int] = None) -> torch.nn.Module:
    """The denoiser of a checkpoint directory (or a run's newest checkpoint), in eval mode."""
    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt)
    if latent_channels is None:  # from the VAE's config.json: no VAE weights are loaded for the denoiser
        latent_channels = autoencoder_latent_channels(cfg.autoencoder)
    model = build_model(cfg.model, cfg.conditions, latent_channels)
    name = weights_name(ckpt, weights)
    sd = load_weights(ckpt, name)
    check_state_dict(model, sd, f"{ckpt}/{name}.safetensors")
    model.load_state_dict(sd)
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()
