"""A diffusers ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x, or any U-Net of that layout) -> a moviola
Video LDM checkpoint: ``moviola convert diffusers-unet DIR OUT``.

moviola's image U-Net (nn/unet.py) carries diffusers' parameter names, so the weights move as they are,
under ``unet.``; the config becomes a ``model.family: video_ldm`` section (levels, attention resolutions,
heads) and the cross-attention width becomes ``conditions.text_channels``. By default the checkpoint is the
image model (``temporal_layers: none``): a temporal stage then starts from it with ``--init-from`` (the
temporal layers start at zero, so the video model begins as this image model, frame by frame).
``temporal_layers=...`` writes them now instead, freshly initialized.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from moviola.config import load_config
from moviola.interop.common import read_diffusers_config, read_diffusers_weights, write_checkpoint_dir
from moviola.io.checkpoint import CheckpointError
from moviola.nn.unet import UNet2D


# what Video LDM's U-Net fixes to Stable Diffusion's values (nn/unet.py implements the others too)
SD_FIXED = {"act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "norm_eps": 1e-5}


def unet_model_section(config: dict) -> tuple[dict, int]:
    """The ``model:`` section (family video_ldm, temporal layers off) of a UNet2DConditionModel config, and
    its cross-attention width. Raises CheckpointError for a config moviola's U-Net does not implement."""
    try:
        with torch.device("meta"):  # validates every key (no weights allocated)
            UNet2D.from_diffusers_config(config)
    except ValueError as e:
        raise CheckpointError(f"this UNet2DConditionModel cannot be converted: {e}") from e
    fixed = {k: config[k] for k, v in SD_FIXED.items() if k in config and config[k] != v}
    if fixed:
        raise CheckpointError(f"this UNet2DConditionModel sets {fixed}: Video LDM's U-Net is Stable Diffusion's, "
                              f"with {SD_FIXED}")
    if not isinstance(config.get("layers_per_block", 2), int):
        raise CheckpointError("layers_per_block per level is not supported by Video LDM's config: give one count")
    channels = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    down = list(config.get("down_block_types", ()))
    up = list(config.get("up_block_types", ()))
    attention = [i for i, name in enumerate(down) if name.startswith("CrossAttn")]
    if [name.startswith("CrossAttn") for name in reversed(up)] != [name.startswith("CrossAttn") for name in down]:
        raise CheckpointError(f"up_block_types {up} do not mirror down_block_types {down}: Video LDM's U-Net has "
                              "spatial transformers at the same levels going down and up")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise CheckpointError(f"mid_block_type {config.get('mid_block_type')!r}: Video LDM's U-Net has a "
                              "UNetMidBlock2DCrossAttn")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    section = {"family": "video_ldm", "block_out_channels": channels,
               "layers_per_block": config.get("layers_per_block", 2),
               "attention_resolutions": [2 ** i for i in attention],
               "norm_num_groups": config.get("norm_num_groups", 32),
               "use_linear_projection": bool(config.get("use_linear_projection", False)),
               "transformer_layers": config.get("transformer_layers_per_block", 1),
               "temporal_layers": "none"}
    if isinstance(heads, int):
        section["num_heads"] = heads
    else:  # heads per level (SD 2.x): a constant head width
        widths = {c // h for c, h in zip(channels, heads)}
        if len(widths) != 1 or any(c % h for c, h in zip(channels, heads)):
            raise CheckpointError(f"attention heads {list(heads)} over channels {channels} are not one head width")
        section["head_channels"] = widths.pop()
    if not isinstance(section["transformer_layers"], int):
        raise CheckpointError("transformer_layers_per_block per level is not supported: give one count")
    in_ch, out_ch = config.get("in_channels", 4), config.get("out_channels", 4)
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"out_channels={out_ch} is neither in_channels={in_ch} nor twice it")
    section["learned_sigma"] = out_ch == 2 * in_ch
    return section, config.get("cross_attention_dim", 1280)


def import_diffusers_unet(src: Union[str, Path], out_dir: Union[str, Path], vae: Optional[Union[str, Path]] = None,
                          text_encoder: Optional[Union[str, Path]] = None,
                          temporal_layers: str = "none") -> Path:
    """``moviola convert diffusers-unet SRC OUT``: the U-Net (a ``unet/`` directory or a pipeline root) -> a
    checkpoint directory whose ``load_model`` gives diffusers' output on a one-frame video.

    ``vae`` and ``text_encoder`` default to ``vae/`` and ``text_encoder/`` beside ``unet/``; the schedule is
    read from ``scheduler/scheduler_config.json`` there when present (SD's scaled-linear ε schedule otherwise).
    """
    src, config = read_diffusers_config(Path(src), "UNet2DConditionModel", "unet")
    root = src.parent if src.name == "unet" else src
    section, text_width = unet_model_section(config)
    section["temporal_layers"] = temporal_layers
    tree = unet_run_tree(root, config, section, text_width, vae, text_encoder, default_size=64, cfg_scale=7.5)
    cfg = load_config(data=tree)
    sd = {f"unet.{k}": v for k, v in read_diffusers_weights(src).items()}
    if temporal_layers != "none":  # fresh temporal layers beside the image weights
        from moviola.models.registry import build_model

        model = build_model(cfg.model, cfg.conditions, config.get("in_channels", 4))
        sd = {**{k: v for k, v in model.state_dict().items() if k not in sd}, **sd}
    return write_checkpoint_dir(out_dir, cfg, sd)


def unet_run_tree(root: Path, config: dict, section: dict, text_width: int, vae, text_encoder, *,
                  default_size: int, cfg_scale: float) -> dict:
    """The run config of a converted diffusers U-Net (2-D or 3-D): its model section, the VAE (``vae`` or ``vae/``
    beside ``unet/``, checked against the U-Net's input channels), the text encoder (``text_encoder`` or
    ``text_encoder/``, if any), the schedule of ``scheduler/`` and a clip size from ``sample_size``."""
    if vae is None:
        vae = root / "vae"
        if not (vae / "config.json").is_file():
            raise CheckpointError(f"no VAE found at {vae}: give --vae DIR (a diffusers AutoencoderKL directory)")
    vae_cfg = json.loads((Path(vae) / "config.json").read_text())
    latent = config.get("in_channels", 4)
    if vae_cfg.get("latent_channels", 4) != latent:
        raise CheckpointError(f"the VAE at {vae} has {vae_cfg.get('latent_channels', 4)} latent channels, the U-Net "
                              f"takes {latent}")
    if text_encoder is None and (root / "text_encoder" / "config.json").is_file():
        text_encoder = root / "text_encoder"
    factor = 2 ** (len(vae_cfg.get("block_out_channels", (1,))) - 1)
    size = config.get("sample_size") or default_size
    tree = {"name": root.name, "model": section,
            "conditions": {"text_channels": text_width, "text_dropout": 0.1},
            "autoencoder": {"kind": "frame_vae", "path": str(Path(vae).absolute())},
            "data": {"dataset": "folder", "root": "data/videos",
                     "size": (size if isinstance(size, int) else size[0]) * factor, "frames": 16},
            "diffusion": _schedule(root / "scheduler" / "scheduler_config.json"),
            "sample": {"sampler": "ddim", "steps": 50, "cfg": cfg_scale}}
    if text_encoder is not None:
        tree["text"] = {"encoder": str(Path(text_encoder).absolute()), "max_length": 77}
    return tree


def _schedule(path: Path) -> dict:
    """The diffusion section of a diffusers scheduler config (SD 1.x's when there is none: scaled linear, ε,
    steps_offset 1, set_alpha_to_one false); a key the file leaves out takes DDIMScheduler's default."""
    sched = json.loads(path.read_text()) if path.is_file() else {}
    kind = sched.get("beta_schedule", "scaled_linear")
    if kind not in ("linear", "scaled_linear"):
        raise CheckpointError(f"{path}: beta_schedule {kind!r} is not linear or scaled_linear")
    prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(sched.get("prediction_type", "epsilon"))
    if prediction is None:
        raise CheckpointError(f"{path}: prediction_type {sched.get('prediction_type')!r} is not epsilon, "
                              "v_prediction or sample")
    spacing = sched.get("timestep_spacing", "leading")
    section = {"schedule": kind, "beta_start": sched.get("beta_start", 0.00085),
               "beta_end": sched.get("beta_end", 0.012), "num_timesteps": sched.get("num_train_timesteps", 1000),
               "prediction": prediction, "timestep_spacing": spacing,
               # SD's DDIM: timesteps 1 … 981 (steps_offset 1) ending on alphas_cumprod[0] (set_alpha_to_one false)
               "final_alpha": "one" if sched.get("set_alpha_to_one", path.is_file()) else "first"}
    if spacing == "leading":
        section["steps_offset"] = int(sched.get("steps_offset", 0 if path.is_file() else 1))
    return section
