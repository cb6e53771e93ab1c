"""What a run trains, as the run loop (``loop.py``) sees it: the base of the diffusion and autoencoder tasks.

A task builds its model, EMA and optimizer, takes one optimizer step on a batch, saves and loads
its weights, and may judge its model. The loop owns everything else (run directory, resume,
signals, fault rules, metrics, data reading).

Two names for the model, kept apart so that many processes change one place (:meth:`Task.wrap`):
``task.model`` is what the forward pass runs (later a DDP wrapper), ``task.raw_model`` is the
module that owns the weights: EMA updates, gradient clipping, parameter groups, checkpoints and
the judge use it (and the EMA copy), never the wrapper.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moviola.config import RunConfig
from moviola.data import check_classes
from moviola.io.checkpoint import (check_state_dict, load_state, load_weights, optimizer_from_flat,
                                  save_checkpoint)
from moviola.training.data import BatchPlan
from moviola.training.distributed import World
from moviola.training.ema import EMA
from moviola.utils import resolve_precision


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the weights of ``model``: itself, or what a DDP wrapper wraps."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def lr_at(step: int, cfg: RunConfig) -> float:
    """The learning rate of step ``step``: linear warmup, then constant or cosine to ``min_lr_ratio``."""
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return t.lr


class Task:
    """The base of a training task; the loop calls, in order: :meth:`check`, :meth:`check_dataset`,
    :meth:`build`, then :meth:`load` (a resume), :meth:`step` per step, :meth:`judge` and
    :meth:`save` at their cadences.

    A task implements :meth:`build` (setting ``dataset``, ``plan``, ``model``, ``ema`` and
    ``optimizer``, and ending with ``self.model = self.wrap(model)``) and :meth:`step`; the rest
    has defaults: saving and loading the model, EMA and optimizer, no judge, no extra tensors.
    """

    data_parallel = False  # whether the task's step takes train.parallel=ddp and train.grad_accum > 1

    def __init__(self, cfg: RunConfig, device: torch.device, log: Callable[[str], None], quiet: bool = False,
                 precision: Optional[str] = None):
        self.cfg, self.device, self.log, self.quiet = cfg, device, log, quiet
        # what the steps autocast to: train.precision with ``auto`` decided (the loop decides and says why)
        self.precision = precision or resolve_precision(cfg.train.precision, device)[0]
        self.text = None  # a text encoder, for tasks that condition on captions
        self.model: nn.Module
        self.ema: EMA
        self.optimizer: torch.optim.Optimizer
        self.dataset = None
        self.plan: BatchPlan
        self.world = World()  # this process's rank among the run's processes (the loop sets it)

    # ---------------------------------------------------------------- building
    def check(self) -> None:
        """Refusals that need more than the config (files, encoders), before any data is read."""

    def check_dataset(self, dataset) -> None:
        """Refusals that need the dataset (its classes, a folder's caption records), before any model is built."""
        c = self.cfg.conditions
        check_classes(c, getattr(dataset, "name", "the dataset"), getattr(dataset, "num_classes", 0))
        check_captions = getattr(dataset, "check_captions", None)  # a folder: labels and captions from captions.jsonl
        if check_captions is not None and self.cfg.train.task == "diffusion":  # (an autoencoder reads neither)
            check_captions(num_classes=c.num_classes, text=c.text_channels is not None)

    def build(self, dataset, plan: BatchPlan, init_from: Optional[str]) -> None:
        """Model, EMA and optimizer; ``self.dataset`` is what the loop reads (a task may wrap it)."""
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the forward pass runs: the model, or with train.parallel=ddp its DDP wrapper (which
        averages the gradients over the ranks in backward)."""
        if self.world.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a step may leave parts unused (a dropped condition's branch, frozen stages)
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    @property
    def raw_model(self) -> nn.Module:
        return unwrap(self.model)

    # ---------------------------------------------------------------- one step
    def step(self, step: int, batch: Optional[dict] = None) -> Optional[dict]:
        """One optimizer step on step ``step``'s batch: a metrics row with ``loss``, or None when the
        loss or gradient was not finite (then nothing was updated)."""
        raise NotImplementedError

    def read_batch(self, step: int) -> dict:
        """Step ``step``'s collated items, read in this process (the loop hands the step its batch)."""
        return self.plan.read(self.dataset, step)

    def clip(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        """Clip the gradients of ``params`` (of :attr:`raw_model` or another module) to ``train.grad_clip``."""
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, clip)

    def judge(self) -> dict:
        """Scores of the EMA model, logged every ``train.sample_every`` steps; none by default."""
        return {}

    # ---------------------------------------------------------------- checkpoints
    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the model, EMA and optimizer that a resume needs (``extra.safetensors``)."""
        return {}

    def load_extra(self, path: Path) -> None:
        """Load what :meth:`extra_tensors` saved."""

    def state(self) -> dict:
        return {"ema_updates": self.ema.updates}

    def save(self, root: Path, step: int, config: dict, state: dict, keep_last: int) -> Path:
        return save_checkpoint(root, step, config, self.raw_model, self.ema.model, self.optimizer, state,
                               extra_tensors=self.extra_tensors() or None, keep_last=keep_last)

    def load(self, path: Path) -> dict:
        """Weights (checked against the configured model before any tensor is used), extra tensors,
        optimizer and EMA count of checkpoint ``path``; returns its state for the loop's counters."""
        for name, module in (("model", self.raw_model), ("ema", self.ema.model)):
            sd = load_weights(path, name)
            check_state_dict(module, sd, f"{path}/{name}.safetensors")
            module.load_state_dict(sd)
        self.load_extra(path)
        state = load_state(path)
        opt_tensors = load_weights(path, "optimizer")
        optimizer_from_flat(self.optimizer, {k: v.to(self.device) for k, v in opt_tensors.items()},
                            state["optimizer"])
        self.ema.updates = int(state.get("ema_updates", state["step"]))
        return state
