"""The diffusion training loop: one run directory, resumable, crash-safe.

Run directory layout::

    <run>/config.json          the resolved config (every key, defaults filled in)
    <run>/metrics.jsonl        one JSON line per logged step (loss, lr, grad norm, it/s, ...)
    <run>/checkpoints/step_*/  checkpoints (see training/checkpoint.py), the newest K kept

Determinism: the batch of step ``s`` (which clips, which timesteps, which noise, which labels
are dropped) is a pure function of ``(train.seed, s)``, so a resumed run sees exactly the data
an uninterrupted run would have seen, with no data-loader state to save.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from moviola.autoencoders import build_autoencoder
from moviola.conditioning import Conditioning
from moviola.config import ConfigError, RunConfig, save_config, to_dict
from moviola.diffusion import NoiseSchedule, make_betas, training_losses
from moviola.models.registry import build_model
from moviola.training.checkpoint import (load_state, load_weights, optimizer_from_flat, resolve_checkpoint,
                                         save_checkpoint)
from moviola.training.ema import EMA
from moviola.utils import autocast, resolve_device


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps: the run stops, its last good checkpoint intact."""


def build_schedule(cfg: RunConfig) -> NoiseSchedule:
    d = cfg.diffusion
    return NoiseSchedule(make_betas(d.schedule, d.num_timesteps, d.beta_start, d.beta_end,
                                    zero_terminal_snr=d.zero_terminal_snr))


def build_dataset(cfg: RunConfig, split: str = "train"):
    d = cfg.data
    if d.dataset == "shapes":
        from moviola.data.shapes import MovingShapes

        return MovingShapes(split=split, count=d.count, size=d.size, frames=d.frames, seed=d.seed, bounce=d.bounce)
    from moviola.data.folders import VideoFolder

    return VideoFolder(d.root, frames=d.frames, stride=d.frame_stride, size=d.size)


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
    out = {"video": torch.stack([it["video"] for it in items])}
    if "label" in items[0]:
        out["label"] = torch.stack([torch.as_tensor(it["label"]) for it in items]).long()
    out["caption"] = [it.get("caption", "") for it in items]
    return out


def lr_at(step: int, cfg: RunConfig) -> float:
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return t.lr


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
                 on_step: Optional[Callable[[int, dict], None]] = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.on_step = on_step
        self.device = resolve_device(cfg.train.device)
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")

        ckpt_dir = self.run_dir / "checkpoints"
        has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.glob("step_*"))
        if has_ckpt and not resume:
            raise ConfigError(f"run directory {self.run_dir} already has checkpoints: pass --resume to "
                              "continue it, or choose another --run-dir")
        if resume and not has_ckpt:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")

        torch.manual_seed(cfg.train.seed)
        self.dataset = build_dataset(cfg)
        if len(self.dataset) == 0:
            raise ConfigError("the training set is empty")
        self.autoencoder = build_autoencoder(cfg.autoencoder).to(self.device)
        self.schedule = build_schedule(cfg)
        self.model = build_model(cfg.model, self.autoencoder.latent_channels).to(self.device)
        self.ema = EMA(self.model, cfg.train.ema_decay)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay)
        self.step = 0
        self.bad_steps_total = 0
        self.bad_steps_run = 0
        self._stop_signal: Optional[str] = None

        if resume:
            self._load(resolve_checkpoint(ckpt_dir))
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.json")

    # ---------------------------------------------------------------- checkpoints
    def _load(self, path: Path) -> None:
        self.model.load_state_dict(load_weights(path, "model"))
        self.ema.model.load_state_dict(load_weights(path, "ema"))
        state = load_state(path)
        opt_tensors = load_weights(path, "optimizer")
        optimizer_from_flat(self.optimizer, {k: v.to(self.device) for k, v in opt_tensors.items()},
                            state["optimizer"])
        self.step = int(state["step"])
        self.ema.updates = int(state.get("ema_updates", self.step))
        self.bad_steps_total = int(state.get("bad_steps_total", 0))
        self.log(f"resumed from {path} at step {self.step}")

    def save(self) -> Path:
        state = {"ema_updates": self.ema.updates, "bad_steps_total": self.bad_steps_total,
                 "torch_version": torch.__version__}
        return save_checkpoint(self.run_dir / "checkpoints", self.step, to_dict(self.cfg), self.model,
                               self.ema.model, self.optimizer, state, keep_last=self.cfg.train.keep_last)

    # ---------------------------------------------------------------- one step
    def make_batch(self, step: int) -> tuple[torch.Tensor, Conditioning, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        idx = batch_indices(step, cfg.train.batch_size, len(self.dataset), cfg.train.seed)
        batch = collate([self.dataset[i] for i in idx])
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        video = batch["video"].to(self.device)
        with torch.no_grad():
            x0 = self.autoencoder.encode(video)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        keep = torch.rand(B, generator=g) >= cfg.model.class_dropout_prob
        cond = Conditioning()
        if cfg.model.num_classes:
            cond = Conditioning(labels=batch["label"]).drop(keep, ["labels"])
        return x0, cond.to(self.device), t.to(self.device), noise.to(self.device, x0.dtype), keep

    def train_step(self, step: int) -> Optional[dict]:
        cfg = self.cfg
        x0, cond, t, noise, _ = self.make_batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        self.model.train()
        with autocast(self.device, cfg.train.precision):
            terms = training_losses(self.model, self.schedule, x0, t, cond, prediction=cfg.diffusion.prediction,
                                    learned_sigma=cfg.model.learned_sigma, noise=noise,
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
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signal.Signals(signum).name

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
        skipped = getattr(self.dataset, "skipped", None)
        if skipped:
            self.log(f"data: skipped {sum(skipped.values())} unusable items {dict(skipped)}")
            self._write_metrics({"step": self.step, "data_skipped": dict(skipped)})
        last: dict = {}
        window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
        bar = tqdm(total=end, initial=self.step, disable=self.quiet, dynamic_ncols=True, desc="train")
        try:
            while self.step < end:
                out = self.train_step(self.step)
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
                    window_loss += out["loss"]
                    window_n += 1
                    bar.update(1)
                    if self.step % cfg.train.log_every == 0 or self.step == end:
                        elapsed = time.perf_counter() - t_window
                        last = {"step": self.step, **out, "loss": window_loss / window_n,
                                "it_s": window_n / max(elapsed, 1e-9), "bad_steps_total": self.bad_steps_total,
                                "time": time.time()}
                        bar.set_postfix(loss=f"{last['loss']:.4f}", it_s=f"{last['it_s']:.2f}")
                        self._write_metrics(last)
                        window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
                    if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                        self._write_metrics({"step": self.step, **self.judge()})
                    if self.on_step is not None:
                        self.on_step(self.step, out)
                # a skipped step still counts: the checkpoint cadence, the final checkpoint and a
                # stop signal must not depend on whether the last step was finite
                if self._stop_signal or self.step % cfg.train.checkpoint_every == 0 or self.step == end:
                    path = self.save()
                    if self._stop_signal:
                        self.log(f"{self._stop_signal}: wrote checkpoint {path}; resume with --resume")
                        break
        finally:
            bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        return last

    @torch.no_grad()
    def judge(self, n: int = 12) -> dict:
        """Sample a few videos with the EMA model and score them by the Moving Shapes rules."""
        if self.cfg.data.dataset != "shapes" or not self.cfg.model.num_classes:
            return {}
        from moviola.eval.shapes_score import score_batch
        from moviola.pipelines.generate import Pipeline

        pipe = Pipeline(self.ema.model, self.autoencoder, self.schedule, self.cfg, device=self.device)
        labels = [int(i * self.cfg.model.num_classes / n) for i in range(n)]
        video = pipe(labels=labels, steps=self.cfg.train.sample_steps, seed=0)
        s = score_batch(video, labels)
        return {f"judge_{k}": v for k, v in s.items() if isinstance(v, (int, float))}


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    return Trainer(cfg, run_dir, resume=resume, quiet=quiet).train()
