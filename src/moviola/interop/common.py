"""What every converter shares: writing a moviola checkpoint directory, and naming sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from moviola.config import LATTE_SIZES, RunConfig, autoencoder_latent_channels, save_config
from moviola.models.registry import build_model
from moviola.io.checkpoint import check_state_dict, write_new_directory


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
