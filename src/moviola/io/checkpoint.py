"""Checkpoint directories: safetensors for tensors, JSON for everything else.

A checkpoint is ``<run>/checkpoints/step_XXXXXXXX/`` holding ``config.json``,
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` and ``state.json``
(counters, RNG states, optimizer hyper-parameters). It is written under a temporary name,
every file flushed to disk, then renamed in one step: a crash at any moment leaves either the
complete new checkpoint or none of it, and the previous one is untouched. moviola never
unpickles its own files.

Failure rules (tested in tests/test_reliability.py, summarized in docs/reliability.md):

- A write that fails (disk full, I/O error, a file shorter than its header promises) raises
  :class:`CheckpointWriteError` (an ``OSError``) after removing the temporary directory; the
  previous checkpoints are untouched. The trainer decides whether to retry or stop.
- Old checkpoints are pruned by renaming them to ``.del-*`` first and deleting second, so a crash
  while pruning never leaves a half-deleted ``step_*`` directory that looks complete.
- Foreign weights (another project's ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin``) are read by
  :func:`load_foreign_state_dict` with ``torch.load(weights_only=True)``: tensors and plain
  containers only, a pickle that would construct any other object (or call any function) is
  refused before anything runs.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d{8})$")
REQUIRED_FILES = ("config.json", "model.safetensors", "state.json")


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message says what is missing."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoints are intact."""


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
    """Inverse of :func:`optimizer_to_flat`; per-parameter tensors are shape-checked before use."""
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        if not pid.isdigit() or int(pid) >= len(params):
            raise CheckpointError(f"optimizer state {name!r} names parameter {pid}, the model has {len(params)}")
        if value.ndim and value.shape != params[int(pid)].shape:
            raise CheckpointError(f"optimizer state {name!r} has shape {tuple(value.shape)}, its parameter "
                                  f"{tuple(params[int(pid)].shape)}: the checkpoint does not fit this model")
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _safetensors_size(path: Path) -> tuple[int, int]:
    """(size the header promises, size on disk) of a safetensors file, reading the header only."""
    actual = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return -1, actual
        (n,) = struct.unpack("<Q", head)
        if n > actual:
            return -1, actual
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end, actual


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``save_file`` plus a size check: a short write (a full disk) is an error, never a checkpoint."""
    try:
        save_file(tensors, str(path))
        expected, actual = _safetensors_size(path)
    except SafetensorError as e:  # safetensors reports its own I/O failures this way
        raise CheckpointWriteError(f"writing {path.name} failed: {e}") from e
    except ValueError as e:  # an unreadable header: the file is not what was written
        raise CheckpointWriteError(f"writing {path.name} failed: unreadable header ({e})") from e
    if expected != actual:
        raise CheckpointWriteError(f"writing {path.name} failed: {actual} bytes on disk, the header "
                                   f"promises {expected} (disk full?)")


def save_checkpoint(root: Path, step: int, config: dict, model: torch.nn.Module,
                    ema: Optional[torch.nn.Module] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                    state: Optional[dict] = None, extra_tensors: Optional[dict[str, torch.Tensor]] = None,
                    keep_last: int = 2) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically and keep the newest ``keep_last`` checkpoints.

    Any failure to write (an ``OSError`` such as a full disk, a short safetensors file) removes the
    temporary directory and raises :class:`CheckpointWriteError`; existing checkpoints are untouched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _recover_replaced(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_json(tmp / "config.json", config)
        _save_tensors(state_dict_to_cpu(model.state_dict()), tmp / "model.safetensors")
        if ema is not None:
            _save_tensors(state_dict_to_cpu(ema.state_dict()), tmp / "ema.safetensors")
        full_state = dict(state or {})
        full_state["step"] = step
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_flat(optimizer)
            _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            full_state["optimizer"] = opt_meta
        if extra_tensors:
            _save_tensors(state_dict_to_cpu(extra_tensors), tmp / "extra.safetensors")
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, CheckpointWriteError):
            raise CheckpointWriteError(e.errno, f"writing checkpoint step {step} in {root} failed: "
                                       f"{e.strerror or e}") from e
        raise
    prune_checkpoints(root, keep_last)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _recover_replaced(root: Path) -> None:
    """Undo a crash between the two renames that replace a checkpoint of the same step."""
    try:
        for old in Path(root).glob(".old-step_*"):
            name, pid = old.name[len(".old-"):].rsplit("-", 1)
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # its writer is still between the two renames
            target = old.parent / name
            if not target.exists() and STEP_DIR.match(name) and all((old / f).is_file() for f in REQUIRED_FILES):
                old.rename(target)
            elif target.exists():
                shutil.rmtree(old, ignore_errors=True)
    except OSError:  # a read-only run directory: nothing to repair here
        pass


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
        # rename first: a crash mid-delete must not leave a step_* dir that still looks complete
        doomed = old.parent / f".del-{old.name}-{os.getpid()}"
        try:
            old.rename(doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    for stale in Path(root).glob(".del-step_*"):  # a crashed pruner's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    for stale in Path(root).glob(".tmp-step_*"):  # leftovers of a crashed writer
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint path, a run directory, or a run's checkpoints/.

    A directory of another kind (an autoencoder, a diffusers model, a file) is refused by
    :func:`check_kind`, with what it is and which command takes it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    check_kind(path, ("diffusion", "autoencoder_run", "unknown"), "a moviola checkpoint or run directory")
    if all((path / f).is_file() for f in REQUIRED_FILES):
        return path
    for root in (path / "checkpoints", path):
        _recover_replaced(root)
        ckpts = list_checkpoints(root)
        if ckpts:
            return ckpts[-1]
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path  # a shipped checkpoint: weights and config, no training state
    raise CheckpointError(f"no checkpoint in {path}: expected config.json + model.safetensors, "
                          "or a run directory with checkpoints/step_*")


# ---- what a directory holds, told from its JSON alone: a command given the wrong kind says so ----

AUTOENCODER_CLASSES = ("CausalVAE", "TemporalDecoderVAE", "AutoencoderKL")
# each kind: what it is, and which commands take it ({name}: its class or autoencoder kind; {path}: the path)
KINDS = {
    "diffusion": ("a moviola diffusion checkpoint", "moviola sample, export and convert to-diffusers take it"),
    "autoencoder_run": ("a train-vae run (an autoencoder: {name})", "moviola export {path} OUT writes it for "
                        "autoencoder.path; moviola eval-vae {path} scores it"),
    "autoencoder": ("an autoencoder ({name})", "use it as autoencoder.path in a config, or with moviola eval-vae"),
    "diffusers_latte": ("a diffusers {name}", "convert it first: moviola convert diffusers-latte {path} OUT"),
    "diffusers_pipeline": ("a diffusers pipeline ({name})", "convert its transformer first: moviola convert "
                           "diffusers-latte {path} OUT"),
    "diffusers": ("a diffusers {name}", "moviola reads diffusers AutoencoderKL and LatteTransformer3DModel "
                  "directories only"),
    "file": ("a file", "give a directory (config.json + weights), or a run directory"),
}


@dataclass(frozen=True)
class CheckpointKind:
    """``kind``: a key of :data:`KINDS` (``autoencoder_run``: a train-vae run or checkpoint, train.task
    autoencoder; ``autoencoder``: a CausalVAE, TemporalDecoderVAE or AutoencoderKL directory; ...), or
    ``missing`` / ``unknown``. ``name``: the class (``_class_name``), or the run's autoencoder.kind."""

    kind: str
    name: str = ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trains_autoencoder(cfg: dict, ckpt: Path) -> bool:
    """train.task of a saved moviola config; one saved before train.task existed implies it from its
    autoencoder section (the rule of config.trains_autoencoder: a new autoencoder, or temporal layers)."""
    train, ae = cfg.get("train"), cfg.get("autoencoder")
    if isinstance(train, dict) and isinstance(train.get("task"), str):
        return train["task"] == "autoencoder"
    kind, path = (ae.get("kind", "identity"), ae.get("path")) if isinstance(ae, dict) else ("identity", None)
    if kind == "temporal_decoder" and isinstance(path, str) and path:
        meta = _read_json((ckpt / path if (ckpt / path).exists() else Path(path)) / "config.json")
        return not (isinstance(meta, dict) and meta.get("_class_name") == "TemporalDecoderVAE")
    return kind != "identity" and not path


def checkpoint_kind(path: Union[str, Path]) -> CheckpointKind:
    """What ``path`` holds, from its config.json (or model_index.json) alone; no weights are read."""
    p = Path(path)
    if p.is_file():
        return CheckpointKind("file")
    if not p.is_dir():
        return CheckpointKind("missing")
    raw = _read_json(p / "config.json")
    if raw is None and (p / "model_index.json").is_file():
        index = _read_json(p / "model_index.json")
        return CheckpointKind("diffusers_pipeline", str(index.get("_class_name", "")) if isinstance(index, dict)
                              else "model_index.json")
    if isinstance(raw, dict) and "_class_name" in raw:
        name = str(raw["_class_name"])
        if name in AUTOENCODER_CLASSES:
            return CheckpointKind("autoencoder", name)
        return CheckpointKind("diffusers_latte" if name == "LatteTransformer3DModel" else "diffusers", name)
    ckpts = list_checkpoints(p / "checkpoints") or list_checkpoints(p)
    ckpt = ckpts[-1] if ckpts else p
    cfg = _read_json(ckpt / "config.json") if ckpts else raw
    if not isinstance(cfg, dict) or not any(isinstance(cfg.get(k), dict) for k in ("model", "train", "data")):
        return CheckpointKind("unknown")
    if _trains_autoencoder(cfg, ckpt):
        ae = cfg.get("autoencoder")
        return CheckpointKind("autoencoder_run", str(ae.get("kind", "")) if isinstance(ae, dict) else "")
    return CheckpointKind("diffusion")


def check_kind(path: Union[str, Path], wanted: tuple[str, ...], role: str) -> CheckpointKind:
    """The kind of ``path``; a :class:`CheckpointError` saying what it is and which command takes it
    unless it is one of ``wanted`` (``missing`` and ``unknown`` pass: the caller's own checks explain them)."""
    kind = checkpoint_kind(path)
    if kind.kind in wanted or kind.kind in ("missing", "unknown"):
        return kind
    what, use = (text.format(name=kind.name or "?", path=path) for text in KINDS[kind.kind])
    raise CheckpointError(f"{path} is {what}, not {role}: {use}")


def load_weights(path: Path, name: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"missing {f.name} in checkpoint {path}")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is not a readable safetensors file (corrupt or truncated): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def weights_name(path: Path, preferred: str = "ema") -> str:
    """Which weights file of a checkpoint to read: ``preferred`` (ema or model) when present, else
    ``model`` (a shipped export holds one set of weights, stored as model.safetensors)."""
    return preferred if (Path(path) / f"{preferred}.safetensors").is_file() else "model"


def load_state(path: Path) -> dict:
    f = Path(path) / "state.json"
    if not f.is_file():
        return {}
    try:
        state = json.loads(f.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{f} is not readable JSON (corrupt checkpoint): {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f} must hold a JSON object, got {type(state).__name__}")
    return state


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


# --------------------------------------------------------------------------------------------
# Foreign weights: read tensors, never run code
# --------------------------------------------------------------------------------------------

FOREIGN_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
_WRAPPER_KEYS = ("ema", "model", "state_dict")  # in order of preference


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of another project's weights file, read without executing anything in it.

    - ``.safetensors``: read with safetensors (a JSON header and raw bytes; nothing to execute).
    - ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin``: ``torch.load(path, map_location="cpu",
      weights_only=True)``. PyTorch's restricted unpickler accepts tensors and plain containers
      (dict, list, tuple, str, numbers) only; a pickle that would build any other object or call
      any function (a code payload, an ``argparse.Namespace`` of training args) is refused before
      anything is constructed, and this raises :class:`CheckpointError` saying so and how to
      convert a file you trust.

    Common wrappers are unwrapped, preferring the EMA weights: ``{"ema": sd}`` over
    ``{"model": sd}`` over ``{"state_dict": sd}`` (nested wrappers too, e.g. Lightning's). The
    result maps names to CPU tensors exactly as stored (no prefix stripping, no renaming);
    check it against a model with :func:`check_state_dict` before using any tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FOREIGN_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights format {suffix or '(no suffix)'!r}; "
                              f"expected one of {', '.join(FOREIGN_SUFFIXES)}")
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\. |\n|$)", str(e))
        why = found.group(1).strip() if found else "unknown reason"
        what = ("the file carries Python objects that are not tensors, which could run code on load"
                if re.search(r"global|class|function", why, re.IGNORECASE) else
                "not a plain tensor file (corrupt, or it holds other Python objects)")
        raise CheckpointError(
            f"{path}: refused to unpickle: {what} ({why}). moviola reads .pt files with "
            "torch.load(weights_only=True) only. If you trust the file, convert it once in a separate "
            "Python session: sd = torch.load(path, weights_only=False); "
            "safetensors.torch.save_file(sd['ema'] (or the state dict it holds), 'weights.safetensors')"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch reports corrupt files with many exception types
        raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or truncated?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    for _ in range(3):  # unwrap {"ema": {...}}, {"state_dict": {"model": {...}}}, ...
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {bad[:8]}"
                              f"{'…' if len(bad) > 8 else ''} (top-level keys: {list(obj)[:8]})")
    if not obj:
        raise CheckpointError(f"{path} holds no tensors")
    return {k: v.contiguous() for k, v in obj.items()}


def write_new_directory(out_dir: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Create ``out_dir`` whole or not at all: ``write(tmp)`` fills a temporary sibling, which is
    flushed and renamed. ``out_dir`` must not exist or be an empty directory: nothing is overwritten.
    (Exports and conversions use this; training checkpoints use ``save_checkpoint``.)"""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir} already exists and is not an empty directory: choose a new output directory")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    made = [p for p in out_dir.parents if not p.exists()]  # parents this call creates, removed again on failure
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for f in sorted(tmp.rglob("*"), reverse=True):  # files (and subdirectories) before their parents
            (_fsync_dir if f.is_dir() else _fsync_file)(f)
        _fsync_dir(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:  # innermost first; only while empty
            try:
                parent.rmdir()
            except OSError:
                break
        if isinstance(e, OSError) and str(out_dir) not in str(e):  # name what the user named, not the temporary
            try:
                error = type(e)(f"writing {out_dir} failed: {e.strerror or e}")
            except Exception:  # noqa: BLE001 - an OSError subclass with other constructor arguments
                error = OSError(f"writing {out_dir} failed: {e.strerror or e}")
            error.errno = e.errno
            raise error from e
        raise
    return out_dir
