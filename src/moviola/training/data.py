"""Which items a training step reads, and the stream of collated batches the run loop consumes.

The batch of a step is a pure function of ``(train.seed, step)``, so a resumed run reads exactly
the data an uninterrupted run would have read, with no data-loader state to save. With
``data.num_workers > 0`` a DataLoader reads the same index lists in worker processes (items are
pure functions of their index), so the batches are the same as with main-process loading.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info


def batch_indices(step: int, batch_size: int, n: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The dataset indices process ``rank`` of ``world_size`` reads at step ``step``.

    The data is one endless stream: epoch ``e`` is a permutation of the ``n`` items seeded by
    ``(seed, e)``, epochs follow each other. Step ``s`` takes the global batch at positions
    ``[s·G, (s+1)·G)`` of the stream, ``G = batch_size · world_size`` (``train.batch_size`` is the
    batch of one process), and rank ``r`` takes the ``r``-th slice of ``batch_size`` positions.
    So the global batch is a pure function of ``(seed, step, G)``: the ranks read different
    positions (the same item twice only across an epoch boundary, as one process would), and W
    processes with batch B read what one process with batch W·B reads. With ``world_size=1``
    these are the single-process indices of every run so far (``tests/test_golden.py`` pins them).

    >>> whole = batch_indices(3, 4, 10, seed=0)
    >>> whole == batch_indices(3, 2, 10, 0, rank=0, world_size=2) + batch_indices(3, 2, 10, 0, rank=1, world_size=2)
    True
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    first = (step * world_size + rank) * batch_size  # this rank's first position in the stream
    out = []
    for k in range(first, first + batch_size):
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
    if "low_latent" in items[0]:  # an upsampler's low-resolution latents, cached beside the latents
        out["low_latent"] = torch.stack([it["low_latent"] for it in items])
    if "image_tokens" in items[0]:  # the image encoder's tokens of each clip's frame 0, cached beside the latents
        out["image_tokens"] = torch.stack([it["image_tokens"] for it in items])
    if "label" in items[0]:
        out["label"] = torch.stack([torch.as_tensor(it["label"]) for it in items]).long()
    out["caption"] = [it.get("caption", "") for it in items]
    if "stride" in items[0]:  # each clip's frame stride (data.frame_strides): its fps is data.fps / stride
        out["stride"] = torch.tensor([int(it["stride"]) for it in items], dtype=torch.int64)
    return out


@dataclass(frozen=True)
class BatchPlan:
    """What this process reads each step: ``batch_size`` items of its rank's slice (see :func:`batch_indices`)."""
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def indices(self, step: int, n: int) -> list[int]:
        return batch_indices(step, self.batch_size, n, self.seed, self.rank, self.world_size)

    def read(self, dataset, step: int) -> dict:
        """Step ``step``'s items, read in this process and collated."""
        return collate([dataset[i] for i in self.indices(step, len(dataset))])


class StepBatchSampler(Sampler[list[int]]):
    """The index lists of steps ``start .. end-1``: :func:`batch_indices`, a pure function of the step."""

    def __init__(self, start: int, end: int, batch_size: int, n: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.start, self.end, self.n = start, end, n
        self.plan = BatchPlan(batch_size, seed, rank, world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield self.plan.indices(step, self.n)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def collate_with_report(items: list[dict]) -> dict:
    """:func:`collate` in a DataLoader worker, plus the bad items that worker's dataset copy found.

    Each worker has its own copy of the dataset, so what it skipped is invisible to the main
    process unless it travels with the batch; the run loop merges these by file name.
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


def step_batches(dataset, plan: BatchPlan, start: int, end: int, workers: int) -> Iterator[dict]:
    """The collated batches of steps ``start .. end-1``: read in this process (``workers == 0``) or
    by ``workers`` DataLoader processes, whose batches carry the bad items they found (``bad_items``)."""
    if workers == 0:
        for step in range(start, end):
            yield plan.read(dataset, step)
        return
    sampler = StepBatchSampler(start, end, plan.batch_size, len(dataset), plan.seed, plan.rank, plan.world_size)
    loader = DataLoader(dataset, num_workers=workers, collate_fn=collate_with_report, batch_sampler=sampler,
                        worker_init_fn=_worker_init,
                        # the workers' base seed comes from here, not from the global RNG
                        generator=torch.Generator().manual_seed(plan.seed))
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
