"""The diffusion training loop: one run directory, resumable, crash-safe.

Run directory layout::

    <run>/config.json          the resolved config (every key, defaults filled in)
    <run>/metrics.jsonl        one JSON line per logged step (loss, lr, grad norm, it/s, ...)
    <run>/checkpoints/step_*/  checkpoints (see training/checkpoint.py), the newest K kept

Determinism: the batch of step ``s`` (which clips, which timesteps, which noise, which labels
are dropped) is a pure function of ``(train.seed, s)``, so a resumed run sees exactly the data
an uninterrupted run would have seen, with no data-loader state to save. With
``data.num_workers > 0`` a DataLoader reads the same index lists in worker processes (items are
pure functions of their index), so the batches are the same as with main-process loading.
A checkpoint also stores the global RNG states (torch, numpy, python), the partial loss-log
window and the fault counters, so a resumed run's weights, EMA, optimizer and loss log are
bit-identical to an uninterrupted run's (tests/test_reliability.py).

Faults (the rules; docs/reliability.md has the table of injected faults):

- A non-finite loss or gradient skips the step (no optimizer or EMA update), logs a
  ``skipped_step`` row and counts it; ``train.max_bad_steps`` consecutive ones raise
  :class:`TrainingDiverged` before anything else is written, so the last good checkpoint stays.
- A checkpoint write that fails (``OSError``: disk full, I/O error, a short file) leaves the
  previous checkpoints intact, prints a warning, logs a ``checkpoint_failed`` row and training
  continues: the next checkpoint interval retries. ``train.max_failed_saves`` failures in a row,
  or a failed final checkpoint (end of training or a stop signal, where there is no later
  interval), raise :class:`CheckpointWriteFailed`: the run stops, naming the newest valid
  checkpoint to resume from.
- SIGINT / SIGTERM finish the current step, write a checkpoint and stop (``stopped_by`` holds the
  signal's name); a second SIGINT aborts at once, the newest complete checkpoint stays valid.
- Unusable data items are skipped and counted (``data_skipped`` rows: at the start, and whenever
  a new bad item turns up while reading, also from DataLoader workers).
- On resume, ``metrics.jsonl`` rows past the checkpoint's step (work lost with a killed process,
  redone after the resume) and a torn last line are dropped, so the log reads as one run.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info
from tqdm import tqdm

from moviola.autoencoders import build_autoencoder
from moviola.conditioning import Conditioning
from moviola.conditioning.context import context_mask
from moviola.conditioning.text import build_text
from moviola.config import ConfigError, RunConfig, save_config, to_dict
from moviola.data import build_dataset
from moviola.data.joint import extra_image_frames
from moviola.diffusion import build_schedule, training_losses
from moviola.models.registry import build_model
from moviola.io.checkpoint import (CheckpointError, CheckpointWriteError, check_state_dict, list_checkpoints, load_state,
                                         load_weights, optimizer_from_flat, resolve_checkpoint, save_checkpoint,
                                         weights_name)
from moviola.training.ema import EMA
from moviola.utils import autocast, resolve_device


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps: the run stops, its last good checkpoint intact."""


class CheckpointWriteFailed(RuntimeError):
    """Checkpoints could not be written (see the module docstring's rule); earlier ones are intact."""


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Dataset indices of step ``step``: epochs of seeded permutations, a pure function of the step."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = _epoch_perm(seed, epoch, n)
        out.append(int(perm[pos]))
    return out


_PERM_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def _epoch_perm(seed: int, epoch: int, n: int) -> torch.Tensor:
    key = (seed, epoch, n)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        _PERM_CACHE[key] = torch.randperm(n, generator=g)
    return _PERM_CACHE[key]


def collate(items: list[dict]) -> dict:
    key = "latent" if "latent" in items[0] else "video"  # pre-encoded latents (data.latent_cache) or pixels
    out = {key: torch.stack([it[key] for it in items])}
    if "label" in items[0]:
        out["label"] = torch.stack([torch.as_tensor(it["label"]) for it in items]).long()
    out["caption"] = [it.get("caption", "") for it in items]
    return out


class StepBatchSampler(Sampler[list[int]]):
    """The index lists of steps ``start .. end-1``: :func:`batch_indices`, a pure function of the step."""

    def __init__(self, start: int, end: int, batch_size: int, n: int, seed: int):
        self.start, self.end, self.batch_size, self.n, self.seed = start, end, batch_size, n, seed

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield batch_indices(step, self.batch_size, self.n, self.seed)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def collate_with_report(items: list[dict]) -> dict:
    """:func:`collate` in a DataLoader worker, plus the bad items that worker's dataset copy found.

    Each worker has its own copy of the dataset, so what it skipped is invisible to the main
    process unless it travels with the batch; the trainer merges these by file name.
    """
    batch = collate(items)
    info = get_worker_info()
    bad = getattr(info.dataset, "bad_items", None) if info is not None else None
    if bad:
        batch["bad_items"] = dict(bad)
    return batch


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group and a scheduler's SIGTERM may too: the main process
    # decides when to stop (after a checkpoint) and shuts the workers down itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _worker_error(e: BaseException) -> BaseException:
    """A DataLoader re-raises a worker's ValueError with the worker traceback as its message;
    the user needs the original one line (e.g. "no readable video left in ...")."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    prefix = f"{type(e).__name__}: "
    return type(e)(last[len(prefix):] if last.startswith(prefix) else last)


def _rng_states() -> dict:
    states = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states["numpy"] = [kind, keys.tolist(), pos, has_gauss, gauss]
    version, inner, gauss_next = random.getstate()
    states["python"] = [version, list(inner), gauss_next]
    return states


def _set_rng_states(states: dict) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    if "torch" in states:
        torch.set_rng_state(tensor(states["torch"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensor(s) for s in states["cuda"]])
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in states:
        version, inner, gauss_next = states["python"]
        random.setstate((version, tuple(inner), gauss_next))


def init_from_checkpoint(model: torch.nn.Module, path: str) -> list[str]:
    """Warm start from a moviola checkpoint (e.g. a shipped ``checkpoints/*`` export): every weight
    whose name and shape match is copied; optimizer state and step count start fresh.

    A weight that gained input channels (the patch embedding of a model that adds context-frame
    channels to a model trained without them) gets the old weights in its first channels and
    zeros in the new ones, so the new inputs start with no influence (as SD's inpainting models).
    """
    ckpt = resolve_checkpoint(path)
    name = weights_name(ckpt, "ema")
    sd = load_weights(ckpt, name)
    own = model.state_dict()
    loaded = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    widened = {k: v for k, v in sd.items() if k in own and k not in loaded and _widens_inputs(v.shape, own[k].shape)}
    if not loaded:
        raise CheckpointError(f"--init-from {ckpt}: no weight fits this model (different architecture?)")
    with torch.no_grad():
        for k, v in loaded.items():
            own[k].copy_(v.to(own[k].dtype))
        for k, v in widened.items():
            own[k].zero_()
            own[k][:, :v.shape[1]].copy_(v.to(own[k].dtype))
    done = set(loaded) | set(widened)
    left = sorted(set(own) - done)
    unused = sorted(set(sd) - done)
    return [f"init-from {ckpt}/{name}.safetensors: loaded {len(loaded)} of {len(own)} tensors",
            *([f"init-from: widened (new input channels zero): {sorted(widened)}"] if widened else []),
            f"init-from: left at initialization: {left[:10]}{'…' if len(left) > 10 else ''}" if left else
            "init-from: every tensor loaded",
            *([f"init-from: not used from the file: {unused[:10]}"] if unused else [])]


def _widens_inputs(old: torch.Size, new: torch.Size) -> bool:
    """Same shape except more input channels (dim 1) in the new weight."""
    return (len(old) == len(new) >= 2 and old[0] == new[0] and old[2:] == new[2:] and new[1] > old[1])


def lr_at(step: int, cfg: RunConfig) -> float:
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return t.lr


class Trainer:
    """Diffusion training. The run mechanics (run directory, resume, signals, fault rules, metrics)
    live in the methods a subclass keeps; ``_build``, ``train_step``, ``save``, ``_load_weights``
    and ``judge`` are what another kind of training (``VAETrainer``) replaces."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
                 on_step: Optional[Callable[[int, dict], None]] = None, init_from: Optional[str] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.on_step = on_step
        self.device = resolve_device(cfg.train.device)
        if cfg.train.precision == "fp16":
            # fp16 gradients underflow without loss scaling, which the trainer does not do (yet)
            raise ConfigError("train.precision=fp16 is not supported for training (no loss scaling); "
                              "use bf16 (CPU and recent GPUs) or fp32")

        ckpt_dir = self.run_dir / "checkpoints"
        has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.glob("step_*"))
        if has_ckpt and not resume:
            raise ConfigError(f"run directory {self.run_dir} already has checkpoints: pass --resume to "
                              "continue it, or choose another --run-dir")
        if resume and not has_ckpt:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
        if resume and init_from:
            raise ConfigError("--init-from starts a new run; a resumed run continues from its own checkpoint")
        self._check(cfg)

        torch.manual_seed(cfg.train.seed)  # all global RNGs: a run is a function of its config
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.dataset = build_dataset(cfg.data)
        if len(self.dataset) == 0:
            raise ConfigError("the training set is empty")
        classes = getattr(self.dataset, "num_classes", None)
        if classes and cfg.conditions.num_classes not in (0, classes):
            raise ConfigError(f"conditions.num_classes={cfg.conditions.num_classes} does not fit "
                              f"{getattr(self.dataset, 'name', 'the dataset')}, which has {classes} classes "
                              f"(use {classes}, or 0 for an unconditional model)")
        self._build(init_from)
        self.step = 0
        self.bad_steps_total = 0
        self.bad_steps_run = 0
        self.failed_saves = 0  # consecutive failed checkpoint writes
        self.stopped_by: Optional[str] = None  # the signal that stopped train(), if one did
        self._stop_signal: Optional[str] = None
        self._window_loss, self._window_n = 0.0, 0  # the loss-log window, saved so resume logs the same
        self._probe_skipped = Counter(getattr(self.dataset, "skipped", None) or {})  # found at init
        self.data_bad: dict[str, str] = {}  # items found unusable while reading: file -> reason

        if resume:
            self._load(resolve_checkpoint(ckpt_dir))
            self._trim_metrics(self.step)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # no checkpoint here: whatever an earlier process logged is work that did not survive
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            save_config(cfg, self.run_dir / "config.json")

    def _check(self, cfg: RunConfig) -> None:
        """Refusals that need more than the config (files, encoders), before any data is read."""
        if cfg.autoencoder.kind != "identity" and cfg.autoencoder.path is None:
            raise ConfigError(f"autoencoder.kind={cfg.autoencoder.kind} without autoencoder.path is a new, untrained "
                              "autoencoder: train one first (moviola train-vae) and set autoencoder.path to its export")
        self.text = build_text(cfg, self.device)  # None for a model without text

    def _build(self, init_from: Optional[str]) -> None:
        """The autoencoder, denoiser, diffusion schedule, EMA and optimizer of a diffusion run."""
        cfg = self.cfg
        self.autoencoder = build_autoencoder(cfg.autoencoder).to(self.device)
        if cfg.data.latent_cache:
            if cfg.data.use_image_num:
                raise ConfigError("data.latent_cache with data.use_image_num is not supported: the extra image "
                                  "frames are read as pixels; turn one of them off")
            if cfg.data.num_workers and self.device.type == "cuda":
                raise ConfigError("data.latent_cache encodes in the data loader, and CUDA cannot run in forked "
                                  "DataLoader workers: set data.num_workers=0 (the cached latents are cheap to read)")
            from moviola.data.latent_cache import LatentCache

            self.dataset = LatentCache(self.dataset, self.autoencoder, to_dict(cfg)["data"], device=self.device)
            filled = self.dataset.fill(cfg.train.batch_size, progress=not self.quiet)  # batched: fast
            if filled:
                self.log(f"latent cache: encoded {filled} clips into {self.dataset.dir}")
        self.schedule = build_schedule(cfg.diffusion)
        self.model = build_model(cfg.model, cfg.conditions, self.autoencoder.latent_channels).to(self.device)
        if init_from and Path(init_from).is_dir():  # a moviola checkpoint: warm start from its weights
            for line in init_from_checkpoint(self.model, init_from):
                self.log(line)
        elif init_from:  # an image DiT fills the frame-wise parts (models/convert/dit_init.py)
            from moviola.interop import init_from_dit

            for line in init_from_dit(self.model, init_from):
                self.log(line)
        self.ema = EMA(self.model, cfg.train.ema_decay)
        t = cfg.train
        trained = self.model.parameter_groups(t.stage)  # train.stage: the rest of the model stays frozen
        if t.stage != "all":
            ids = {id(p) for p in trained}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in ids)
        self.optimizer = torch.optim.AdamW(trained, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)

    # ---------------------------------------------------------------- checkpoints
    def _load_weights(self, path: Path) -> None:
        # names, shapes and dtypes are checked against the configured model before any tensor is used
        for name, module in (("model", self.model), ("ema", self.ema.model)):
            sd = load_weights(path, name)
            check_state_dict(module, sd, f"{path}/{name}.safetensors")
            module.load_state_dict(sd)

    def _load(self, path: Path) -> None:
        self._load_weights(path)
        state = load_state(path)
        opt_tensors = load_weights(path, "optimizer")
        optimizer_from_flat(self.optimizer, {k: v.to(self.device) for k, v in opt_tensors.items()},
                            state["optimizer"])
        self.step = int(state["step"])
        self.ema.updates = int(state.get("ema_updates", self.step))
        self.bad_steps_total = int(state.get("bad_steps_total", 0))
        self.bad_steps_run = int(state.get("bad_steps_run", 0))
        self._window_loss, self._window_n = state.get("log_window", (0.0, 0))
        self.data_bad = dict(state.get("data_bad", {}))
        if "rng" in state:
            _set_rng_states(state["rng"])
        self.log(f"resumed from {path} at step {self.step}")

    def _trim_metrics(self, step: int) -> None:
        """Drop log rows past ``step`` (redone after this resume) and a torn last line."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep, dropped = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and int(row.get("step", 0)) <= step
            except (ValueError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = path.with_name(f".metrics.jsonl.{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)
            self.log(f"metrics.jsonl: dropped {dropped} rows logged after step {step} (redone now)")

    def run_state(self) -> dict:
        """Counters and RNG states a resumed run needs to continue exactly."""
        return {"ema_updates": self.ema.updates, "bad_steps_total": self.bad_steps_total,
                "bad_steps_run": self.bad_steps_run, "log_window": [self._window_loss, self._window_n],
                "data_bad": self.data_bad, "rng": _rng_states(), "torch_version": torch.__version__}

    def save(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints", self.step, to_dict(self.cfg), self.model,
                               self.ema.model, self.optimizer, self.run_state(), keep_last=self.cfg.train.keep_last)

    # ---------------------------------------------------------------- one step
    def make_batch(self, step: int, batch: Optional[dict] = None
                   ) -> tuple[torch.Tensor, Conditioning, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``step``'s inputs; ``batch`` is its collated items if a DataLoader already read them."""
        cfg = self.cfg
        if batch is None:
            idx = batch_indices(step, cfg.train.batch_size, len(self.dataset), cfg.train.seed)
            batch = collate([self.dataset[i] for i in idx])
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        if "latent" in batch:  # encoded once, cached (data.latent_cache)
            x0 = batch["latent"].to(self.device)
        else:
            with torch.no_grad():
                x0 = self.autoencoder.encode(batch["video"].to(self.device))
        frames = x0.shape[2]  # latent frames of the videos (joint training appends image frames below)
        labels = batch.get("label")
        if cfg.data.use_image_num:  # Latte+IMG: single frames of other clips after each video (data/joint.py)
            idx = batch_indices(step, cfg.train.batch_size, len(self.dataset), cfg.train.seed)
            images, image_labels = extra_image_frames(self.dataset, idx, cfg.data.use_image_num, cfg.train.seed, step)
            with torch.no_grad():
                x0 = torch.cat([x0, self.autoencoder.encode(images.to(self.device))], dim=2)  # (B, c, T+n, h, w)
            if labels is not None and image_labels is not None:  # a label per frame: (B, T+n)
                labels = torch.cat([labels[:, None].expand(-1, frames), image_labels], dim=1)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        c = cfg.conditions
        keep = torch.rand(B, generator=g) >= c.label_dropout
        cond = Conditioning()
        if c.num_classes:
            cond = Conditioning(labels=labels).drop(keep, ["labels"])
        # (draws for text and context come after the ones above, so class-only runs keep their batches)
        if self.text is not None:  # caption dropout: the empty prompt is the null condition
            keep_text = torch.rand(B, generator=g) >= c.text_dropout
            captions = [c if k else "" for c, k in zip(batch["caption"], keep_text.tolist())]
            cond.text, cond.text_mask = self.text(captions)
        if c.context_frames:  # frames given as conditions; dropped for guidance
            mask = context_mask(c.context_mode, B, frames, generator=g)  # (B, 1, T, 1, 1)
            keep_ctx = (torch.rand(B, generator=g) >= c.context_dropout).float()
            mask = mask * keep_ctx[:, None, None, None, None]
            if x0.shape[2] != frames:  # joint training: the trailing image frames are never given
                mask = torch.cat([mask, mask.new_zeros(B, 1, x0.shape[2] - frames, 1, 1)], dim=2)
            mask = mask.to(self.device, x0.dtype)
            cond.context, cond.context_mask = x0 * mask, mask
        return x0, cond.to(self.device), t.to(self.device), noise.to(self.device, x0.dtype), keep

    def train_step(self, step: int, batch: Optional[dict] = None) -> Optional[dict]:
        cfg = self.cfg
        x0, cond, t, noise, _ = self.make_batch(step, batch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        self.model.train()
        model = self.model
        if cfg.data.use_image_num:  # the model's temporal modules skip the trailing image frames
            model = functools.partial(self.model, num_images=cfg.data.use_image_num)
        with autocast(self.device, cfg.train.precision):
            terms = training_losses(model, self.schedule, x0, t, cond, prediction=cfg.diffusion.prediction,
                                    learned_sigma=self.model.learned_sigma, noise=noise,
                                    loss_weighting=cfg.diffusion.loss_weighting,
                                    min_snr_gamma=cfg.diffusion.min_snr_gamma)
        loss = terms["loss"].float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.ema.update(self.model)
        out = {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": self.optimizer.param_groups[0]["lr"]}
        for k in ("mse", "vb"):
            if k in terms:
                out[k] = terms[k].float().mean().item()
        return out

    # ---------------------------------------------------------------- the loop
    def log(self, msg: str) -> None:
        if not self.quiet:
            tqdm.write(msg)

    def _write_metrics(self, row: dict) -> None:
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a full disk must not end the run over a log line; checkpoints decide
            self._warn(f"could not append to metrics.jsonl: {e}")

    def _warn(self, msg: str) -> None:
        tqdm.write(f"moviola: warning: {msg}", file=sys.stderr)  # faults are shown even with --quiet

    def _handle_signal(self, signum, frame) -> None:
        # only set a flag (no I/O here: the signal may arrive inside a write); the loop stops after
        # this step's checkpoint. A second Ctrl-C aborts now; the newest complete checkpoint stays.
        if self._stop_signal and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signal.Signals(signum).name

    def data_skipped(self) -> dict[str, int]:
        """Unusable data items so far: found at init, plus found while reading (any process)."""
        return dict(self._probe_skipped + Counter(self.data_bad.values()))

    def _note_bad_items(self, bad: Optional[dict]) -> None:
        new = {k: v for k, v in (bad or {}).items() if k not in self.data_bad}
        if new:
            self.data_bad.update(new)
            self.log(f"data: skipped {', '.join(f'{k} ({v})' for k, v in sorted(new.items()))}")
            self._write_metrics({"step": self.step + 1, "data_skipped": self.data_skipped()})  # this step's batch

    def _batches(self, start: int, end: int) -> Iterator[Optional[dict]]:
        """The collated batches of steps ``start .. end-1`` from ``data.num_workers`` DataLoader
        workers, or ``None`` per step (``make_batch`` then reads the items in this process)."""
        workers = self.cfg.data.num_workers
        if workers == 0:
            for _ in range(start, end):
                yield None
            return
        t = self.cfg.train
        loader = DataLoader(self.dataset, num_workers=workers, collate_fn=collate_with_report,
                            batch_sampler=StepBatchSampler(start, end, t.batch_size, len(self.dataset), t.seed),
                            worker_init_fn=_worker_init,
                            # the workers' base seed comes from here, not from the global RNG
                            generator=torch.Generator().manual_seed(t.seed))
        it = iter(loader)
        try:
            for _ in range(start, end):
                try:
                    batch = next(it)
                except ValueError as e:
                    raise _worker_error(e) from None
                yield batch
        finally:
            # shut the workers down now: an exception's traceback may keep the iterator alive, and
            # workers that ignore SIGTERM must not outlive it (interpreter exit would wait on them)
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it

    def _checkpoint(self, final: bool) -> Optional[Path]:
        """Write a checkpoint under the disk-fault rule of the module docstring."""
        try:
            path = self.save()
        except CheckpointWriteError as e:
            self.failed_saves += 1
            kept = list_checkpoints(self.run_dir / "checkpoints")
            intact = f"the newest valid checkpoint is {kept[-1]}" if kept else "no checkpoint has been written yet"
            self._write_metrics({"step": self.step, "checkpoint_failed": str(e), "failed_saves": self.failed_saves})
            if final or self.failed_saves >= self.cfg.train.max_failed_saves:
                why = ("the final checkpoint" if final else
                       f"{self.failed_saves} checkpoints in a row (train.max_failed_saves)")
                raise CheckpointWriteFailed(f"stopping at step {self.step}: {why} could not be written ({e}); "
                                            f"{intact}. Free disk space, then continue with --resume") from e
            self._warn(f"checkpoint at step {self.step} not written ({e}); {intact}; training continues "
                       f"and retries at the next checkpoint ({self.failed_saves}/"
                       f"{self.cfg.train.max_failed_saves} failures in a row)")
            return None
        self.failed_saves = 0
        return path

    def train(self, max_steps: Optional[int] = None) -> dict:
        """Train until ``train.steps`` (or ``max_steps`` more steps); returns the last metrics row."""
        cfg = self.cfg
        end = cfg.train.steps if max_steps is None else min(cfg.train.steps, self.step + max_steps)
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread
                pass
        skipped = self.data_skipped()
        if skipped:
            self.log(f"data: skipped {sum(skipped.values())} unusable items {skipped}")
            self._write_metrics({"step": self.step, "data_skipped": skipped})
        last: dict = {}
        t_window = time.perf_counter()
        self.stopped_by = None
        bar = tqdm(total=end, initial=self.step, disable=self.quiet, dynamic_ncols=True, desc="train")
        batches = self._batches(self.step, end)
        try:
            while self.step < end:
                batch = next(batches)
                out = self.train_step(self.step, batch)
                self._note_bad_items(batch.pop("bad_items", None) if batch is not None
                                     else getattr(self.dataset, "bad_items", None))
                if out is None:
                    self.bad_steps_total += 1
                    self.bad_steps_run += 1
                    self._write_metrics({"step": self.step + 1, "skipped_step": "non-finite loss or gradient",
                                         "bad_steps_total": self.bad_steps_total})
                    if self.bad_steps_run >= cfg.train.max_bad_steps:
                        raise TrainingDiverged(
                            f"stopping: {self.bad_steps_run} consecutive steps had a non-finite loss or "
                            f"gradient (step {self.step}); the last good checkpoint is intact in "
                            f"{self.run_dir / 'checkpoints'}. Lower train.lr or check the data.")
                    self.step += 1
                    bar.update(1)
                else:
                    self.bad_steps_run = 0
                    self.step += 1
                    self._window_loss += out["loss"]
                    self._window_n += 1
                    bar.update(1)
                    if self.step % cfg.train.log_every == 0 or self.step == end:
                        elapsed = time.perf_counter() - t_window
                        last = {"step": self.step, **out, "loss": self._window_loss / self._window_n,
                                "it_s": self._window_n / max(elapsed, 1e-9),
                                "bad_steps_total": self.bad_steps_total, "time": time.time()}
                        bar.set_postfix(loss=f"{last['loss']:.4f}", it_s=f"{last['it_s']:.2f}")
                        self._write_metrics(last)
                        self._window_loss, self._window_n, t_window = 0.0, 0, time.perf_counter()
                    if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                        self._write_metrics({"step": self.step, **self.judge()})
                    if self.on_step is not None:
                        self.on_step(self.step, out)
                # a skipped step still counts: the checkpoint cadence, the final checkpoint and a
                # stop signal must not depend on whether the last step was finite
                if self._stop_signal or self.step % cfg.train.checkpoint_every == 0 or self.step == end:
                    path = self._checkpoint(final=bool(self._stop_signal) or self.step == end)
                    if self._stop_signal and path is not None:  # (a signal during a failed write: one more step)
                        self.stopped_by = self._stop_signal
                        self.log(f"{self.stopped_by}: wrote checkpoint {path}; resume with --resume")
                        break
        finally:
            batches.close()
            bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            self._stop_signal = None
        return last

    @torch.no_grad()
    def judge(self, n: int = 12) -> dict:
        """Sample a few videos with the EMA model and score them by the Moving Shapes rules."""
        if self.cfg.data.dataset != "shapes" or not (self.cfg.conditions.num_classes or self.text is not None):
            return {}
        from moviola.data.shapes import NUM_CLASSES, caption, label_to_attributes
        from moviola.eval.shapes_score import score_batch
        from moviola.pipelines.generate import Pipeline

        pipe = Pipeline(self.ema.model, self.autoencoder, self.schedule, self.cfg, device=self.device,
                        text=self.text)
        labels = [int(i * NUM_CLASSES / n) for i in range(n)]
        if self.text is not None:
            video = pipe(prompt=[caption(*label_to_attributes(y)) for y in labels], steps=self.cfg.train.sample_steps, seed=0)
        else:
            video = pipe(labels=labels, steps=self.cfg.train.sample_steps, seed=0)
        s = score_batch(video, labels)
        return {f"judge_{k}": v for k, v in s.items() if isinstance(v, (int, float))}


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    return Trainer(cfg, run_dir, resume=resume, quiet=quiet).train()
