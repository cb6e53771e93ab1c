"""Checkpoint directories: safetensors for tensors, JSON for everything else.

A checkpoint is ``<run>/checkpoints/step_XXXXXXXX/`` holding ``config.json``,
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` and ``state.json``
(counters, RNG states, optimizer hyper-parameters). It is written under a temporary name,
every file flushed to disk, then renamed in one step: a crash at any moment leaves either the
complete new checkpoint or none of it, and the previous one is untouched. moviola never
unpickles its own files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d{8})$")
REQUIRED_FILES = ("config.json", "model.safetensors", "state.json")


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message says what is missing."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_dict_to_cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_checkpoint(root: Path, step: int, config: dict, model: torch.nn.Module,
                    ema: Optional[torch.nn.Module] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                    state: Optional[dict] = None, extra_tensors: Optional[dict[str, torch.Tensor]] = None,
                    keep_last: int = 2) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically and keep the newest ``keep_last`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", config)
        save_file(state_dict_to_cpu(model.state_dict()), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(state_dict_to_cpu(ema.state_dict()), str(tmp / "ema.safetensors"))
        full_state = dict(state or {})
        full_state["step"] = step
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_flat(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            full_state["optimizer"] = opt_meta
        if extra_tensors:
            save_file(state_dict_to_cpu(extra_tensors), str(tmp / "extra.safetensors"))
        _write_json(tmp / "state.json", full_state)  # written last: its presence marks completeness
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
            old = root / f".old-step_{step:08d}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and all((p / f).is_file() for f in REQUIRED_FILES)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def prune_checkpoints(root: Path, keep_last: int) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in Path(root).glob(".tmp-step_*"):  # leftovers of a crashed writer
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint path, a run directory, or a run's checkpoints/."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if all((path / f).is_file() for f in REQUIRED_FILES):
        return path
    for root in (path / "checkpoints", path):
        ckpts = list_checkpoints(root)
        if ckpts:
            return ckpts[-1]
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path  # a shipped checkpoint: weights and config, no training state
    raise CheckpointError(f"no checkpoint in {path}: expected config.json + model.safetensors, "
                          "or a run directory with checkpoints/step_*")


def load_weights(path: Path, name: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"missing {f.name} in checkpoint {path}")
    return load_file(str(f))


def load_state(path: Path) -> dict:
    f = Path(path) / "state.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Names, shapes and dtypes of ``sd`` must match the model before any tensor is used."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model built from its config: "
                              f"missing keys {missing[:8]}{'…' if len(missing) > 8 else ''}, "
                              f"unexpected keys {unexpected[:8]}{'…' if len(unexpected) > 8 else ''}")
    bad = [f"{k}: {tuple(v.shape)} {v.dtype} vs expected {tuple(expected[k].shape)} {expected[k].dtype}"
           for k, v in sd.items() if v.shape != expected[k].shape or v.dtype.is_floating_point != expected[k].dtype.is_floating_point]
    if bad:
        raise CheckpointError(f"{source}: tensors with the wrong shape or dtype: {bad[:5]}")
