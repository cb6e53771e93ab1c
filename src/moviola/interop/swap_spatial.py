"""Personalization by swapping spatial layers (Video LDM, Blattmann et al. 2023, §4.1.2, the DreamBooth
transfer): ``moviola convert swap-spatial VIDEO IMAGE OUT``.

A Video LDM's temporal layers were trained on top of a frozen image backbone; inserting them into another
image model of the same architecture (e.g. one fine-tuned with DreamBooth on a few images of a subject)
turns that model into a video model too. OUT is VIDEO's config and weights with every *spatial* tensor (the
image U-Net, the label and noise-level embeddings: everything outside ``temp_convs``, ``temp_attentions``
and ``context_pyramid``) replaced by IMAGE's. IMAGE is any ``video_ldm`` checkpoint with the same spatial
architecture: an image model (``temporal_layers: none``) or another video model, whose temporal layers are
ignored. Every check happens before anything is written; OUT records its sources in ``export.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from safetensors.torch import save_file
from torch import nn

from moviola.config import autoencoder_latent_channels, save_config
from moviola.interop.common import model_on_meta
from moviola.io.checkpoint import (CheckpointError, check_state_dict, load_weights, resolve_checkpoint, weights_name,
                                   write_new_directory)
from moviola.models.loading import load_run_config

EXPORT_FILE = "export.json"


def temporal_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of a Video LDM's temporal layers: its ``parameter_groups("temporal")``, plus the
    buffers inside those layers (a fixed α)."""
    temporal = {id(p) for p in model.parameter_groups("temporal")}
    keys = set()
    for name, value in model.state_dict(keep_vars=True).items():
        if isinstance(value, nn.Parameter):
            if id(value) in temporal:
                keys.add(name)
        elif model.is_temporal(name):
            keys.add(name)
    return keys


def _read(path: Union[str, Path], role: str, weights: str):
    """(checkpoint dir, config, model on meta, its temporal keys, weights name, state dict) of a video_ldm."""
    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt)
    if cfg.model.family != "video_ldm":
        raise CheckpointError(f"{role} {path} is a {cfg.model.family} checkpoint: swapping spatial layers takes two "
                              "video_ldm checkpoints")
    model = model_on_meta(cfg, autoencoder_latent_channels(cfg.autoencoder))
    name = weights_name(ckpt, weights)
    sd = load_weights(ckpt, name)
    check_state_dict(model, sd, f"{role} {ckpt}/{name}.safetensors")
    return ckpt, cfg, model, temporal_keys(model), name, sd


def _check_conditions(video_cfg, image_cfg) -> None:
    """The settings that shape (or give meaning to) spatial weights must agree; each mismatch named."""
    pairs = [("conditions.text_channels (the text width)", video_cfg.conditions.text_channels,
              image_cfg.conditions.text_channels),
             ("conditions.num_classes (the class count)", video_cfg.conditions.num_classes,
              image_cfg.conditions.num_classes),
             ("conditions.noise_level", video_cfg.conditions.noise_level, image_cfg.conditions.noise_level),
             ("conditions.low_res", video_cfg.conditions.low_res, image_cfg.conditions.low_res),
             ("latent channels (the autoencoder)", autoencoder_latent_channels(video_cfg.autoencoder),
              autoencoder_latent_channels(image_cfg.autoencoder)),
             ("model.learned_sigma", video_cfg.model.learned_sigma, image_cfg.model.learned_sigma),
             ("diffusion.prediction (what the U-Net outputs)", video_cfg.diffusion.prediction,
              image_cfg.diffusion.prediction)]
    _refuse_differences(pairs)


def _check_unet_settings(video_cfg, image_cfg) -> None:
    """What shapes no tensor but changes the U-Net's function: heads, groups (checked after the tensors)."""
    v, i = video_cfg.model.dims(), image_cfg.model.dims()
    _refuse_differences([("the U-Net's heads per level (model.num_heads / model.head_channels)", v.heads(), i.heads()),
                         ("model.norm_num_groups", v.norm_num_groups, i.norm_num_groups)])


def _refuse_differences(pairs) -> None:
    for what, v, i in pairs:
        if v != i:
            raise CheckpointError(f"{what} differs: VIDEO has {v!r}, IMAGE has {i!r}; the spatial layers of IMAGE "
                                  "would not fit VIDEO's config")


def swap_spatial(video: Union[str, Path], image: Union[str, Path], out: Union[str, Path],
                 weights: str = "ema") -> Path:
    """Write ``out``: VIDEO's config and temporal weights, IMAGE's spatial weights; returns ``out``.

    ``video`` / ``image``: checkpoint or run directories of ``model.family: video_ldm``; ``weights``: ``ema``
    or ``model`` (a checkpoint without EMA weights, an export, gives its model weights). Raises
    :class:`CheckpointError`, naming the first difference, before anything is written: another family,
    a VIDEO without temporal layers, different conditions (text width, class count, ...), a spatial
    tensor of VIDEO missing from IMAGE or of another shape, a non-temporal tensor of IMAGE that VIDEO lacks,
    or an existing ``out``. ``out/export.json`` records the sources and the counts.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not an empty directory: choose a new output directory")
    v_ckpt, v_cfg, v_model, v_temporal, v_name, v_sd = _read(video, "VIDEO", weights)
    if not v_temporal:
        raise CheckpointError(f"VIDEO {video} has no temporal layers (model.temporal_layers: "
                              f"{v_cfg.model.temporal_layers}): give the video model first, the image model second")
    i_ckpt, i_cfg, i_model, i_temporal, i_name, i_sd = _read(image, "IMAGE", weights)
    _check_conditions(v_cfg, i_cfg)

    order = list(v_model.state_dict())  # the model's order (a safetensors file's is alphabetical): the first
    spatial = [k for k in order if k not in v_temporal]  # difference named is the first layer that differs
    for k in spatial:
        if k not in i_sd:
            raise CheckpointError(f"VIDEO's spatial tensor {k} {tuple(v_sd[k].shape)} is missing from IMAGE {image}: "
                                  "not the same spatial architecture")
        if i_sd[k].shape != v_sd[k].shape:
            raise CheckpointError(f"spatial tensor {k} has shape {tuple(i_sd[k].shape)} in IMAGE, "
                                  f"{tuple(v_sd[k].shape)} in VIDEO: not the same spatial architecture")
    extra = [k for k in i_model.state_dict() if k not in i_temporal and k not in v_sd]
    if extra:
        raise CheckpointError(f"IMAGE {image} has spatial tensors VIDEO lacks ({len(extra)}, first {extra[0]} "
                              f"{tuple(i_sd[extra[0]].shape)}): not the same spatial architecture")
    _check_unet_settings(v_cfg, i_cfg)

    sd = {k: (v_sd[k] if k in v_temporal else i_sd[k]) for k in order}
    sd = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    check_state_dict(v_model, sd, "the swapped weights")
    record = {"source_video": str(v_ckpt), "source_image": str(i_ckpt), "weights": weights,
              "video_weights": v_name, "image_weights": i_name,
              "swapped_spatial_tensors": len(spatial), "kept_temporal_tensors": len(v_temporal)}

    def write(tmp: Path) -> None:
        save_config(v_cfg, tmp / "config.json")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"source": "swap-spatial"})
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")

    return write_new_directory(out, write)


def swap_report(out: Union[str, Path]) -> dict:
    """What :func:`swap_spatial` recorded in ``out/export.json`` (sources, weights, counts)."""
    return json.loads((Path(out) / EXPORT_FILE).read_text())
