"""Many processes, one run: data-parallel training (``train.parallel: ddp``) launched by torchrun.

``torchrun --standalone --nproc_per_node N -m moviola train CONFIG --set train.parallel=ddp`` (or
``moviola train CONFIG --nproc N``, which runs that command) starts N processes; torchrun tells each
its place in environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), which :func:`init` reads. The backend is gloo on CPU and nccl on CUDA, where each
process takes the device of its local rank (``cuda:LOCAL_RANK``).

What the ranks agree on, and how (the run loop, ``loop.py``, and the tasks use these helpers):

- the data: rank ``r`` reads its slice of each step's global batch (``data.py``: ``batch_indices``);
- the weights: DDP averages the gradients, so every rank clips, steps, and updates its EMA alike;
- a non-finite step: skipped on every rank when it is non-finite on any (:func:`all_true`);
- the logged loss: the mean over ranks (:func:`mean`); a stop signal: stops all ranks (:func:`any_true`);
- the run directory: rank 0 alone writes it (config, metrics, checkpoints).
"""
from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from moviola.config import ConfigError

TIMEOUT = timedelta(minutes=30)  # a collective that waits this long raises instead of hanging forever
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(parallel: str, device: torch.device) -> tuple[World, torch.device]:
    """This process's place and device. ``parallel=none``: one process, ``device`` unchanged.
    ``ddp``: joins the process group torchrun's environment describes (once per process)."""
    if parallel == "none":
        return World(), device
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"train.parallel={parallel} needs torchrun's environment ({', '.join(missing)} not set): "
                          "launch with torchrun --standalone --nproc_per_node N -m moviola train CONFIG "
                          "--set train.parallel=ddp, or moviola train CONFIG --nproc N")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"train.parallel={parallel} runs on CPU (gloo) or CUDA (nccl), not {device.type}")
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=TIMEOUT)
        atexit.register(destroy)
    return World(rank, world_size, local_rank), device


def destroy(wait: bool = False) -> None:
    """Leave the process group (registered at exit by :func:`init`; safe to call twice). ``wait``: after
    every rank has come here (the end of a run: no rank tears its connections down while another still
    uses them); never on an error path, where the other ranks may not come."""
    if active():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), the others after it has finished."""
    if active() and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if active() and dist.get_rank() == 0:
            dist.barrier()


def _reduce(values: list[float], op, device: Optional[torch.device]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_true(flag: bool, device: Optional[torch.device] = None) -> bool:
    """Whether ``flag`` holds on every rank (one process: ``flag``)."""
    return bool(_reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN, device)[0])


def any_true(flag: bool, device: Optional[torch.device] = None) -> bool:
    """Whether ``flag`` holds on any rank."""
    return bool(_reduce([1.0 if flag else 0.0], dist.ReduceOp.MAX, device)[0])


def mean(values: dict[str, float], device: Optional[torch.device] = None) -> dict[str, float]:
    """Each value averaged over the ranks (the same keys on every rank; one process: unchanged)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    summed = _reduce([float(values[k]) for k in keys], dist.ReduceOp.SUM, device)
    n = dist.get_world_size()
    return {k: v / n for k, v in zip(keys, summed)}
