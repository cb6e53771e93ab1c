"""The run loop: one run directory, resumable, crash-safe, for any task (``task.py``).

Run directory layout::

    <run>/config.json          the resolved config (every key, defaults filled in)
    <run>/metrics.jsonl        one JSON line per logged step (loss, lr, grad norm, it/s, ...)
    <run>/checkpoints/step_*/  checkpoints (see io/checkpoint.py), the newest K kept
    <run>/data_skipped.jsonl   the unusable data items found so far: {"file" (relative to data.root), "reason"}

Determinism: the batch of step ``s`` is a pure function of ``(train.seed, s)`` (``data.py``), and
so is every draw a task makes for it (which timesteps, which noise, which labels are dropped),
so a resumed run sees exactly the data an uninterrupted run would have seen. A checkpoint also
stores the global RNG states (torch, numpy, python), the partial loss-log window and the fault
counters, so a resumed run's weights, EMA, optimizer and loss log are bit-identical to an
uninterrupted run's (tests/test_reliability.py).

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
  a new bad item turns up while reading, also from DataLoader workers); the log names the first
  few and why, and ``data_skipped.jsonl`` lists every one (rewritten whole, by a rename, when new
  ones turn up). Items found at init are named when the dataset reports them (``skipped_files``:
  file -> reason), else only counted.
- On resume, ``metrics.jsonl`` rows past the checkpoint's step (work lost with a killed process,
  redone after the resume) and a torn last line are dropped, so the log reads as one run.

Precision: ``train.precision: auto`` is decided when a run starts (bf16 where the device runs it
natively, else fp32; ``utils.resolve_precision``), said in one log line and a metrics row
(``precision``, ``precision_reason``); the saved config keeps ``auto``, so a run resumed on
another machine decides again. An explicit ``bf16`` on a device without native bf16 warns with
the measured cost (a bf16 vs fp32 matmul).

A resumed run continues the run's saved config; ``moviola train --resume`` lets only a few keys
change (``cli/train.py``: more steps, another device, ...), and a resume with a changed config
writes it back to ``<run>/config.json``, so the next resume continues from it.
"""
from __future__ import annotations

import base64
import json
import os
import random
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from moviola.config import ConfigError, RunConfig, config_changes, config_from_json, save_config, to_dict
from moviola.data import build_dataset, check_classes, known_classes
from moviola.io.checkpoint import CheckpointWriteError, list_checkpoints, resolve_checkpoint
from moviola.io.files import atomic_write_text
from moviola.training import distributed
from moviola.training.data import BatchPlan, step_batches
from moviola.training.task import Task
from moviola.utils import bf16_matmul_slowdown, native_bf16, resolve_device, resolve_precision

NAMED_IN_LOG = 5  # unusable data items named in a log line; data_skipped.jsonl has them all


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps: the run stops, its last good checkpoint intact."""


class CheckpointWriteFailed(RuntimeError):
    """Checkpoints could not be written (see the module docstring's rule); earlier ones are intact."""


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


class RunLoop:
    """Runs a task (``task_class``, set by a subclass: ``Trainer``, ``VAETrainer``) in a run directory.

    ``trainer.model``, ``.ema``, ``.optimizer``, ``.text``, ``.make_batch`` and ``.judge`` are the task's.
    """

    task_class: type[Task] = Task

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
                 on_step: Optional[Callable[[int, dict], None]] = None, init_from: Optional[str] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.on_step = on_step
        self._check_parallel(cfg)
        # one process, or this process's place in a torchrun launch (train.parallel=ddp) and its device
        self.world, self.device = distributed.init(cfg.train.parallel, resolve_device(cfg.train.device))
        self.rank, self.world_size = self.world.rank, self.world.world_size
        self.quiet = quiet = quiet or self.rank != 0  # rank 0 speaks for the run
        if cfg.train.precision == "fp16":
            # fp16 gradients underflow without loss scaling, which the trainer does not do (yet)
            raise ConfigError("train.precision=fp16 is not supported for training (no loss scaling); "
                              "use auto (bf16 where the device runs it natively, else fp32), bf16 or fp32")
        ckpt_dir = self.run_dir / "checkpoints"
        self._check_run_dir(ckpt_dir, resume, init_from)
        self.precision, self.precision_reason = self._choose_precision()
        self.task = self.task_class(cfg, self.device, self.log, quiet, precision=self.precision)
        self.task.world = self.world
        known = known_classes(cfg.data)  # a class count that does not fit is refused before the text encoder loads
        if known is not None:
            check_classes(cfg.conditions, *known)
        self.task.check()

        torch.manual_seed(cfg.train.seed)  # all global RNGs: a run is a function of its config
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        dataset = build_dataset(cfg.data)
        if len(dataset) == 0:
            raise ConfigError("the training set is empty")
        self.task.check_dataset(dataset)
        # a step reads grad_accum micro-batches of train.batch_size at once: the task splits them (task.py)
        self.plan = BatchPlan(cfg.train.batch_size * cfg.train.grad_accum, cfg.train.seed, self.rank, self.world_size)
        self.task.build(dataset, self.plan, init_from)
        self.dataset = self.task.dataset  # what the task trains on (data.latent_cache wraps the dataset)
        self._init_counters()
        if resume:
            self._load(resolve_checkpoint(ckpt_dir))
            if self.rank == 0:  # only rank 0 writes the run directory
                self._trim_metrics(self.step)
                self._update_saved_config()
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # no checkpoint here: whatever an earlier process logged is work that did not survive
            for name in ("metrics.jsonl", "data_skipped.jsonl"):
                (self.run_dir / name).unlink(missing_ok=True)
            save_config(cfg, self.run_dir / "config.json")
        distributed.barrier()  # every rank has checked the run directory before rank 0 changes it
        if cfg.train.precision == "auto":  # a decision this machine made: on record beside the losses
            self._write_metrics({"step": self.step, "precision": self.precision,
                                 "precision_reason": self.precision_reason})

    def _check_parallel(self, cfg: RunConfig) -> None:
        """train.parallel and train.grad_accum against the task (before any process group is joined)."""
        t = cfg.train
        if t.grad_accum < 1:
            raise ConfigError(f"train.grad_accum must be 1 or more (got {t.grad_accum})")
        if (t.parallel != "none" or t.grad_accum > 1) and not self.task_class.data_parallel:
            raise ConfigError(f"train.parallel={t.parallel} with train.grad_accum={t.grad_accum}: the "
                              f"{t.task} task trains in one process with grad_accum=1 only (yet)")

    def _check_run_dir(self, ckpt_dir: Path, resume: bool, init_from: Optional[str]) -> None:
        has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.glob("step_*"))
        if has_ckpt and not resume:
            raise ConfigError(f"run directory {self.run_dir} already has checkpoints: pass --resume to "
                              "continue it, or choose another --run-dir")
        if resume and not has_ckpt:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
        if resume and init_from:
            raise ConfigError("--init-from starts a new run; a resumed run continues from its own checkpoint")

    def _choose_precision(self) -> tuple[str, str]:
        """train.precision with ``auto`` decided; says which and why, and warns about emulated bf16."""
        precision, why = resolve_precision(self.cfg.train.precision, self.device)
        self.log(f"precision: {precision} ({why})")
        if self.cfg.train.precision == "bf16" and self.device.type in ("cpu", "cuda"):
            native, reason = native_bf16(self.device)
            if not native:
                slow = bf16_matmul_slowdown(self.device)
                warnings.warn(f"train.precision=bf16, but {reason}: a 256² bf16 matmul took {slow:.1f}× the time "
                              "of fp32 here (measured now); train.precision=auto (fp32 here) is likely faster",
                              stacklevel=3)
        return precision, why

    def _update_saved_config(self) -> None:
        """On resume, write ``config.json`` again if the run continues with changed keys (more steps,
        another device...), so the next resume without a CONFIG continues from these."""
        path = self.run_dir / "config.json"
        try:
            unchanged = path.is_file() and not config_changes(config_from_json(path), self.cfg)
        except (ConfigError, ValueError, OSError):  # unreadable: the run's config is this one now
            unchanged = False
        if not unchanged:
            save_config(self.cfg, path)

    def _init_counters(self) -> None:
        self.step = 0
        self.bad_steps_total = 0
        self.bad_steps_run = 0
        self.failed_saves = 0  # consecutive failed checkpoint writes
        self.stopped_by: Optional[str] = None  # the signal that stopped train(), if one did
        self._stop_signal: Optional[str] = None
        self._window_loss, self._window_n = 0.0, 0  # the loss-log window, saved so resume logs the same
        # items found unusable while reading: file -> reason. The task may have read items already (a
        # latent cache is filled in build): those are named now, and not in the init counts too
        self.data_bad: dict[str, str] = dict(getattr(self.dataset, "bad_items", None) or {})
        self._probe_skipped = (Counter(getattr(self.dataset, "skipped", None) or {})
                               - Counter(self.data_bad.values()))  # found at init
        self._probe_named = dict(getattr(self.dataset, "skipped_files", None) or {})  # file -> reason, if known

    # the task's parts, for scripts and tests that hold a trainer (the loop itself goes through self.task)
    @property
    def model(self) -> torch.nn.Module:
        return self.task.model

    @property
    def ema(self):
        return self.task.ema

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.task.optimizer

    @property
    def text(self):
        return self.task.text

    def make_batch(self, step: int, batch: Optional[dict] = None):
        return self.task.make_batch(step, batch)

    def judge(self, *args, **kwargs) -> dict:
        return self.task.judge(*args, **kwargs)

    # ---------------------------------------------------------------- checkpoints
    def _load(self, path: Path) -> None:
        state = self.task.load(path)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:  # the shards' draws would change (docs/scale.md)
            raise ConfigError(f"--resume: {path} was written by a run on {saved_world} process(es), this one has "
                              f"{self.world_size}: resume with the same number of processes")
        self.step = int(state["step"])
        self.bad_steps_total = int(state.get("bad_steps_total", 0))
        self.bad_steps_run = int(state.get("bad_steps_run", 0))
        self._window_loss, self._window_n = state.get("log_window", (0.0, 0))
        self.data_bad = {**state.get("data_bad", {}), **self.data_bad}  # (and what building the task read)
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
        return {**self.task.state(), "bad_steps_total": self.bad_steps_total,
                "bad_steps_run": self.bad_steps_run, "log_window": [self._window_loss, self._window_n],
                "data_bad": self.data_bad, "rng": _rng_states(), "torch_version": torch.__version__,
                **({"world_size": self.world_size} if self.world_size > 1 else {})}

    def save(self) -> Path:
        if self.rank != 0:  # rank 0 writes the checkpoint; the weights are the same on every rank
            return self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        return self.task.save(self.run_dir / "checkpoints", self.step, to_dict(self.cfg), self.run_state(),
                              keep_last=self.cfg.train.keep_last)

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

    # ---------------------------------------------------------------- logging, signals, data faults
    def log(self, msg: str) -> None:
        if not self.quiet:
            tqdm.write(msg)

    def _write_metrics(self, row: dict) -> None:
        if self.rank != 0:
            return
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
            self.log(f"data: skipped {_name_items(new)}")
            self._write_metrics({"step": self.step + 1, "data_skipped": self.data_skipped()})  # this step's batch
            self._write_skipped_list()

    def _write_skipped_list(self) -> None:
        """``data_skipped.jsonl``: every unusable item named so far, written whole and renamed into place
        (a crash leaves the previous list, never half of one)."""
        if self.rank != 0:
            return
        items = {**self._probe_named, **self.data_bad}
        path = self.run_dir / "data_skipped.jsonl"
        try:
            atomic_write_text(path, "".join(json.dumps({"file": name, "reason": why}) + "\n"
                                            for name, why in sorted(items.items())))
        except OSError as e:  # like a metrics line: not worth ending the run over
            self._warn(f"could not write {path}: {e}")

    # ---------------------------------------------------------------- the loop
    def train_step(self, step: int, batch: Optional[dict] = None) -> Optional[dict]:
        """The task's step on step ``step``'s batch (read by the task when ``batch`` is None)."""
        return self.task.step(step, batch)

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
            named = {**self._probe_named, **self.data_bad}
            where = f"; all in {self.run_dir / 'data_skipped.jsonl'}" if named else ""
            self.log(f"data: skipped {sum(skipped.values())} unusable items {skipped}"
                     + (f": {_name_items(named)}{where}" if named else ""))
            self._write_metrics({"step": self.step, "data_skipped": skipped})
            if named:
                self._write_skipped_list()
        last: dict = {}
        self._t_window = time.perf_counter()
        self.stopped_by = None
        bar = tqdm(total=end, initial=self.step, disable=self.quiet, dynamic_ncols=True, desc="train")
        workers = cfg.data.num_workers
        batches = step_batches(self.dataset, self.plan, self.step, end, workers)
        try:
            while self.step < end:
                batch = next(batches)
                out = self.train_step(self.step, batch)
                # a worker's batch carries what its dataset copy found; in this process the dataset knows
                self._note_bad_items(batch.pop("bad_items", None) if workers
                                     else getattr(self.dataset, "bad_items", None))
                if out is None:
                    self._bad_step(bar)
                else:
                    last = self._good_step(out, end, bar) or last
                # a skipped step still counts: the checkpoint cadence, the final checkpoint and a
                # stop signal must not depend on whether the last step was finite
                if self.world_size > 1 and distributed.any_true(bool(self._stop_signal), self._sync_device):
                    self._stop_signal = self._stop_signal or "SIGTERM"  # a signal to any rank stops them all
                if self._stop_signal or self.step % cfg.train.checkpoint_every == 0 or self.step == end:
                    path = self._checkpoint(final=bool(self._stop_signal) or self.step == end)
                    if self.world_size > 1 and not distributed.all_true(path is not None, self._sync_device):
                        path = None  # rank 0's write failed: every rank takes the next step
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

    @property
    def _sync_device(self) -> Optional[torch.device]:
        return self.device if self.device.type == "cuda" else None  # nccl reduces CUDA tensors, gloo CPU ones

    def _bad_step(self, bar: tqdm) -> None:
        """A step the task skipped (non-finite loss or gradient): counted, logged, fatal when too many in a row."""
        self.bad_steps_total += 1
        self.bad_steps_run += 1
        self._write_metrics({"step": self.step + 1, "skipped_step": "non-finite loss or gradient",
                             "bad_steps_total": self.bad_steps_total})
        if self.bad_steps_run >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"stopping: {self.bad_steps_run} consecutive steps had a non-finite loss or "
                f"gradient (step {self.step}); the last good checkpoint is intact in "
                f"{self.run_dir / 'checkpoints'}. Lower train.lr or check the data.")
        self.step += 1
        bar.update(1)

    def _good_step(self, out: dict, end: int, bar: tqdm) -> Optional[dict]:
        """Count a finished step; log the loss window and the judge when due. Returns the row logged, if one was."""
        t = self.cfg.train
        self.bad_steps_run = 0
        self.step += 1
        self._window_loss += out["loss"]
        self._window_n += 1
        bar.update(1)
        row = None
        if self.step % t.log_every == 0 or self.step == end:
            elapsed = time.perf_counter() - self._t_window
            row = {"step": self.step, **out, "loss": self._window_loss / self._window_n,
                   "it_s": self._window_n / max(elapsed, 1e-9),
                   "bad_steps_total": self.bad_steps_total, "time": time.time()}
            bar.set_postfix(loss=f"{row['loss']:.4f}", it_s=f"{row['it_s']:.2f}")
            self._write_metrics(row)
            self._window_loss, self._window_n, self._t_window = 0.0, 0, time.perf_counter()
        if t.sample_every and self.step % t.sample_every == 0 and self.rank == 0:
            self._write_metrics({"step": self.step, **self.task.judge()})
        if self.on_step is not None:
            self.on_step(self.step, out)
        return row


def _name_items(items: dict[str, str]) -> str:
    """The first few ``file (reason)`` of ``items``, then how many more."""
    names = [f"{k} ({v})" for k, v in sorted(items.items())]
    more = len(names) - NAMED_IN_LOG
    return ", ".join(names[:NAMED_IN_LOG]) + (f" and {more} more" if more > 0 else "")
