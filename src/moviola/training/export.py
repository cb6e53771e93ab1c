"""Export a checkpoint for shipping: config + one set of weights, optionally in half precision.

The result is a directory ``config.json`` + ``model.safetensors`` that ``moviola.load_model``
and ``moviola.load_pipeline`` read like any checkpoint (weights are cast back to the model's
dtype on load). Training state (optimizer, RNG, counters) is left out: it is 3× the weights
and only needed to resume. The autoencoder stays where it is; the exported config names it by a
path relative to the export directory, so the export loads from any working directory as long as
the two directories keep their places (as ``checkpoints/*`` in this repository do).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import save_file

from moviola.config import locate_autoencoder
from moviola.io.checkpoint import (CheckpointError, load_state, load_weights, resolve_checkpoint, weights_name,
                                         write_new_directory)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_checkpoint(src: Union[str, Path], out: Union[str, Path], weights: str = "ema",
                      dtype: str = "fp16") -> Path:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    ckpt = resolve_checkpoint(src)
    name = weights_name(ckpt, weights)
    sd = load_weights(ckpt, name)
    sd = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}

    config = json.loads((ckpt / "config.json").read_text())
    ae = config.get("autoencoder") or {}
    if ae.get("path"):  # name the autoencoder relative to the export
        found = locate_autoencoder(ae["path"], ckpt)
        if not found.exists():
            raise CheckpointError(f"{ckpt}: its autoencoder {ae['path']} is not there (looked next to the checkpoint "
                                  f"and in the current directory); an export without it would not load")
        ae["path"] = os.path.relpath(found.resolve(), Path(out).absolute().resolve())

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"weights": name, "dtype": dtype})
        (tmp / "export.json").write_text(json.dumps({"source": str(ckpt), "weights": name, "dtype": dtype,
                                                     "step": load_state(ckpt).get("step")}, indent=2) + "\n")

    return write_new_directory(out, write)
