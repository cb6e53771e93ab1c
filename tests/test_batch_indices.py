"""Which items a step reads: a pure function of (seed, step, rank, world size)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moviola.training.data import batch_indices


def naive(step: int, batch: int, n: int, seed: int) -> list[int]:
    """One process: an endless stream of seeded epoch permutations, read batch by batch (written out plainly)."""
    stream: list[int] = []
    epoch = 0
    while len(stream) < (step + 1) * batch:
        stream += torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        epoch += 1
    return stream[step * batch:(step + 1) * batch]


@given(step=st.integers(0, 40), batch=st.integers(1, 9), n=st.integers(1, 23), seed=st.integers(0, 5),
       world=st.integers(1, 4))
def test_ranks_split_the_global_batch_of_one_process(step, batch, n, seed, world):
    ranks = [batch_indices(step, batch, n, seed, rank=r, world_size=world) for r in range(world)]
    assert sum(ranks, []) == naive(step, batch * world, n, seed)
    assert batch_indices(step, batch, n, seed) == naive(step, batch, n, seed)


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        batch_indices(0, 4, 10, 0, rank=2, world_size=2)
