"""Timestep plans: which noise level each frame is at, step by step.

A plan is a long tensor of shape ``(steps, T)``. Row ``i`` holds the noise level of every frame
when the model is called at step ``i``, as an index of the sampling schedule (for an ordinary,
not respaced, schedule: the original timestep). At step ``i`` each frame goes from its level in
row ``i`` to its level in row ``i + 1``; after the last row every frame goes to the clean sample.

- Ordinary sampling repeats one level across a row: :func:`uniform_plan`.
- FIFO-Diffusion / diffusion forcing put the frames on a diagonal, each frame some steps behind
  the previous one: :func:`frame_offsets_plan`, :func:`diagonal_plan`.
- Given (context) frames are clean for the whole walk: :func:`with_clean_frames`.

``CLEAN`` (-1) marks a frame that is already clean (a given frame, or one that finished early).
It is not timestep 0, because 0 is itself a noise level (``alphas_cumprod[0] < 1``) that an
ordinary plan still steps from (``leading`` spacing ends at 0). The sampler calls the model with
t = 0 for a clean frame and never changes it. A frame whose level is the same in two consecutive
rows (a FIFO frame waiting at full noise, a clean frame) is left exactly as it is at that step.

Slicing rows off the top of a plan starts the walk part-way (SDEdit, a FIFO queue already filled).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

CLEAN = -1  # a frame that is already clean: called with t = 0, never stepped


def _decreasing_levels(timesteps: Sequence[int]) -> list[int]:
    levels = [int(t) for t in timesteps]
    if not levels:
        raise ValueError("a plan needs at least one timestep")
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"timesteps must be strictly decreasing (noisiest first); got {levels}")
    if levels[-1] < 0:
        raise ValueError(f"timesteps must be >= 0; got {levels}")
    return levels


def uniform_plan(timesteps: Sequence[int], frames: int) -> torch.Tensor:
    """Ordinary sampling: every frame at ``timesteps[i]`` at step i. Shape ``(len(timesteps), frames)``.

    ``timesteps`` is strictly decreasing, e.g. from :func:`~moviola.diffusion.schedule.spaced_timesteps`.
    """
    if frames < 1:
        raise ValueError(f"a plan needs at least one frame; got frames={frames}")
    levels = torch.tensor(_decreasing_levels(timesteps), dtype=torch.long)
    return levels[:, None].expand(-1, frames).clone()  # (steps,) -> (steps, T)


def frame_offsets_plan(timesteps: Sequence[int], offsets: Sequence[int]) -> torch.Tensor:
    """Frame f walks ``timesteps`` starting ``offsets[f]`` steps after the frame with the smallest offset.

    Before its start a frame waits at ``timesteps[0]`` (unchanged); after its last timestep it is
    ``CLEAN``. The plan has ``len(timesteps) + max(offsets) - min(offsets)`` rows and ``len(offsets)``
    frames; its last row holds the frames that finish last, at ``timesteps[-1]``.
    """
    levels = _decreasing_levels(timesteps)
    offsets = [int(o) for o in offsets]
    if not offsets:
        raise ValueError("frame_offsets_plan needs one offset per frame; got none")
    lo = min(offsets)
    delays = [o - lo for o in offsets]
    padded = [levels[0]] * max(delays) + levels + [CLEAN] * max(delays)  # waiting, walking, finished
    steps = len(levels) + max(delays)
    start = max(delays)  # row 0 of a frame with delay d reads padded[start - d]
    cols = [padded[start - d: start - d + steps] for d in delays]  # each (steps,)
    return torch.tensor(cols, dtype=torch.long).T.contiguous()  # (T, steps) -> (steps, T)


def diagonal_plan(timesteps: Sequence[int], frames: int, lag: int = 1) -> torch.Tensor:
    """FIFO-Diffusion's diagonal: frame f starts ``f * lag`` steps after frame 0 (frame 0 is the least noisy)."""
    if frames < 1 or lag < 0:
        raise ValueError(f"diagonal_plan needs frames >= 1 and lag >= 0; got frames={frames}, lag={lag}")
    return frame_offsets_plan(timesteps, [f * lag for f in range(frames)])


def with_clean_frames(plan: torch.Tensor, mask: Union[torch.Tensor, Sequence[bool]]) -> torch.Tensor:
    """The plan with the frames where ``mask`` (shape ``(T,)``, True = given) held ``CLEAN`` at every step."""
    mask = torch.as_tensor(mask, dtype=torch.bool).cpu()
    if plan.dim() != 2 or mask.shape != (plan.shape[1],):
        raise ValueError(f"with_clean_frames needs a (T,) mask for a (steps, T) plan; "
                         f"got mask {tuple(mask.shape)} for plan {tuple(plan.shape)}")
    out = plan.clone()
    out[:, mask] = CLEAN
    return out


def plan_targets(plan: torch.Tensor) -> torch.Tensor:
    """The level each frame goes to at each step: row i + 1, and ``CLEAN`` after the last row. (steps, T)."""
    return torch.cat([plan[1:], torch.full_like(plan[:1], CLEAN)])


def validate_plan(plan: torch.Tensor, num_timesteps: int, frames: Optional[int] = None) -> torch.Tensor:
    """Check a plan and return it as a CPU long tensor; every problem is a ValueError saying where it is."""
    if not torch.is_tensor(plan):
        raise ValueError(f"a plan is a (steps, T) integer tensor; got {type(plan).__name__}")
    if plan.dtype.is_floating_point or plan.dtype.is_complex or plan.dtype == torch.bool:
        raise ValueError(f"a plan holds integer timesteps; got dtype {plan.dtype}")
    if plan.dim() != 2 or plan.shape[0] < 1 or plan.shape[1] < 1:
        raise ValueError(f"a plan has shape (steps, T) with steps, T >= 1; got {tuple(plan.shape)}")
    if frames is not None and plan.shape[1] != frames:
        raise ValueError(f"the plan has {plan.shape[1]} frames (columns) but the sample has {frames}")
    plan = plan.detach().to("cpu", torch.long)
    bad = (plan < CLEAN) | (plan >= num_timesteps)
    if bool(bad.any()):
        i, f = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"plan values are timesteps in [0, {num_timesteps}) or CLEAN ({CLEAN}); "
                         f"step {i}, frame {f} is {int(plan[i, f])}")
    rising = plan[1:] > plan[:-1]
    if bool(rising.any()):
        i, f = (int(v) for v in rising.nonzero()[0])
        raise ValueError(f"a frame's noise level must not rise along the plan: frame {f} goes from "
                         f"{int(plan[i, f])} at step {i} to {int(plan[i + 1, f])} at step {i + 1}")
    idle = ~(plan != plan_targets(plan)).any(dim=1)
    if bool(idle.any()):
        i = int(idle.nonzero()[0])
        raise ValueError(f"step {i} moves no frame (every frame is CLEAN or keeps its level in the next row)")
    return plan
