"""What every converter shares: writing a moviola checkpoint directory, and naming sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from moviola.config import LATTE_SIZES, RunConfig, autoencoder_latent_channels, save_config
from moviola.models.registry import build_model
from moviola.io.checkpoint import CheckpointError, check_state_dict, load_foreign_state_dict, write_new_directory

WEIGHTS = "diffusion_pytorch_model.safetensors"  # a diffusers model's save_pretrained weights


def read_diffusers_config(src: Path, class_name: str, subfolder: str, kind: str = "diffusers") -> tuple[Path, dict]:
    """The directory and config.json of a diffusers ``class_name`` model: ``src`` itself, or ``src/subfolder`` in
    a pipeline root; anything else is a CheckpointError saying what it is."""
    import json

    from moviola.io.checkpoint import check_kind

    src = Path(src)
    if not (src / "config.json").is_file() and (src / subfolder / "config.json").is_file():
        src = src / subfolder  # the root of a pipeline directory
    check_kind(src, (kind,), f"a diffusers {class_name} directory")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} has no config.json: expected a {class_name} save_pretrained directory")
    config = json.loads((src / "config.json").read_text())
    if config.get("_class_name") != class_name:
        raise CheckpointError(f"{src}/config.json is a {config.get('_class_name')!r}, not a {class_name}")
    return src, config


def read_diffusers_weights(src: Path) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers ``save_pretrained`` directory: safetensors, sharded safetensors or a .bin."""
    import json

    from safetensors.torch import load_file

    index = src / f"{WEIGHTS}.index.json"
    if (src / WEIGHTS).is_file():
        return load_file(str(src / WEIGHTS))
    if index.is_file():  # sharded
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(str(src / shard)))
        return sd
    if (src / "diffusion_pytorch_model.bin").is_file():
        return load_foreign_state_dict(src / "diffusion_pytorch_model.bin")
    raise CheckpointError(f"no {WEIGHTS} (nor a sharded index or .bin) in {src}")


def named_size(hidden_size: int, num_heads: Optional[int] = None) -> Optional[str]:
    """The named Latte size with this width (and head count), if there is one."""
    for name, dims in LATTE_SIZES.items():
        if dims["hidden_size"] == hidden_size and num_heads in (None, dims["num_heads"]):
            return name
    return None


def model_on_meta(cfg: RunConfig, in_channels: int) -> torch.nn.Module:
    """The model a config describes, without allocating its weights (for checking key sets)."""
    with torch.device("meta"):
        return build_model(cfg.model, cfg.conditions, in_channels)


def write_checkpoint_dir(out_dir: Union[str, Path], cfg: RunConfig, sd: dict[str, torch.Tensor]) -> Path:
    """``out_dir/config.json`` + ``model.safetensors``, loadable by ``moviola.load_model``.

    The weights are checked against the model the config builds before anything is written;
    the directory appears complete or not at all (written under a temporary name, then renamed).
    """
    check_state_dict(model_on_meta(cfg, autoencoder_latent_channels(cfg.autoencoder)), sd, "the converted weights")

    def write(tmp: Path) -> None:
        save_config(cfg, tmp / "config.json")
        tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        save_file(tensors, str(tmp / "model.safetensors"))

    return write_new_directory(out_dir, write)
