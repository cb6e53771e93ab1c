"""FIFO-Diffusion (Kim, Kang, Choi, Han; NeurIPS 2024): a video of any length from a model trained on
short clips, without training, in memory that does not grow with the length.

A queue of ``L = f·n`` latent frames (f: the model's native clip length in latent frames, n: the
partitions) sits on a diagonal of noise levels: the head (frame 0 of the queue) is the least noisy,
the tail the noisiest. Each iteration every frame takes one sampler step from its own level to the next
(a per-frame timestep plan row: ``diffusion.plan_step``), the head frame, now clean, leaves the queue
to be decoded, and a fresh noise frame joins at the tail. Every frame so walks every level once: the
``S`` steps of the queue are its ``L`` levels (``S = L``, the paper's forced ``steps = f·n``).

- **Latent partitioning.** The model sees ``f`` frames at a time: the queue is cut into ``n`` windows
  of ``f`` frames, each one model call with a level per frame, so each call spans a narrower range of
  levels than one window over the whole queue would.
- **Lookahead denoising.** Windows stride by ``f − ⌊f/2⌋`` and write back only their latter part,
  so every frame is denoised with ``⌊f/2⌋`` less noisy frames before it in view (about twice the
  calls). In front of the head sit the last ``⌊f/2⌋`` frames that left the queue, clean (shown to
  the model at t = 0 and never changed); before any has left, copies of the head at its level.
- **Initialization** (``init="clip"``, the paper's): an ordinary clip of ``f`` frames is sampled
  with the same ``S`` steps, and the queue starts full, frame q being clip frame ``min(q, f − 1)``
  noised to its level (``q_sample``). ``init="noise"`` starts from noise instead: frame q waits at
  the first level until ``q`` iterations have passed (the diagonal plan of ``plans.frame_offsets_plan``
  walked from its first row).

Generalization (ours): ``frames_per_level = g`` puts the queue's frames in groups of g that share a
level, the groups ``S / (L / g)`` steps apart; a group leaves together. g = 1 is the paper;
``g = L`` with ``n = 1``, no lookahead and ``init="noise"`` is ordinary sampling, clip after
independent clip, which tests/test_long_video.py checks bit for bit. ``steps`` may be any multiple of
the number of levels ``L / g`` (the default: the least one not below ``sample.steps``); then frames
are ``steps / (L / g)`` steps apart and a frame leaves every that many iterations.

Memory: the queue (L frames, and L more of x0 estimates for a self-conditioned model), the
``⌊f/2⌋`` frames in front of it, and at most ``f`` latent frames waiting to be decoded (plus ``f``
before them as the decoder's context, for a causal or temporal decoder) are all that is kept, whatever
the length: a latent frame is decoded and dropped once ``f`` have left the queue. Decoded frames
go to ``on_frames`` as they come (then nothing of the video is kept), or are collected into the
returned video. Each video's noise (the clip's start noise, the re-noising, each fresh frame, DDIM's
eta noise) is drawn from its own generator, seed + video index, so a video is a pure function of its
seed. DDIM and DDPM only: DPM-Solver++(2M)'s multistep history does not follow frames through a queue.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from moviola.diffusion import CLEAN, SamplerState, plan_step, spaced_timesteps
from moviola.diffusion.samplers import ONE_STEP_SAMPLERS
from moviola.diffusion.schedule import randn
from moviola.pipelines.inputs import Sampling

# ``Pipeline`` and ``Conditions`` in the annotations are pipelines/base.py's, not imported: base.py's
# ``Pipeline.__call__(long=...)`` calls into this module, and imports run one way (tests/test_layers.py)

INITS = ("clip", "noise")


@dataclass(frozen=True)
class FIFO:
    """FIFO-Diffusion's options (module docstring): ``pipe(..., long=FIFO(partitions=2))``."""

    partitions: int = 4  # n: the queue holds n clips' worth of latent frames (n model calls per iteration)
    lookahead: bool = True  # lookahead denoising: windows at half strides, each frame seen after cleaner ones
    init: str = "clip"  # "clip": the queue starts as an ordinary clip noised along the diagonal; "noise": from noise
    frames_per_level: int = 1  # g: neighbouring frames sharing a level (1: the paper's diagonal)

    def __post_init__(self):
        for name in ("partitions", "frames_per_level"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"FIFO {name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))  # a numpy int too
        if not isinstance(self.lookahead, bool):
            raise ValueError(f"FIFO lookahead must be True or False, got {self.lookahead!r}")
        if self.init not in INITS:
            raise ValueError(f"FIFO init must be one of {list(INITS)}, got {self.init!r}")


@dataclass(frozen=True)
class Queue:
    """The queue's shape for one model, resolved and checked (:func:`fifo_queue`)."""

    window: int  # f: latent frames per model call (the native clip)
    length: int  # L = f·n
    group: int  # g: frames per level
    steps: int  # S: levels each frame walks
    lag: int  # d = S / (L / g): steps between neighbouring groups, iterations between departures
    front: int  # frames in front of the head (lookahead: ⌊f/2⌋, else 0)
    timesteps: tuple[int, ...]  # the S levels, noisiest first (schedule indices)

    def level(self, k: int) -> int:
        """The level of a frame ``k`` iterations after it started walking (waiting before, CLEAN after)."""
        return self.timesteps[min(max(k, 0), self.steps - 1)] if k < self.steps else CLEAN


def fifo_queue(pipe: Pipeline, options: FIFO, steps: Optional[int], sampler: str, height: int,
               width: int) -> Queue:
    """The queue of ``options`` for this pipeline's model; every impossible combination a one-line ValueError."""
    if sampler not in ONE_STEP_SAMPLERS:
        raise ValueError(f"long='fifo' steps each frame once per iteration: use sampler {' or '.join(ONE_STEP_SAMPLERS)} "
                         f"(got {sampler!r}; dpm++2m's multistep history cannot follow frames through the queue)")
    f = pipe.autoencoder.latent_shape(pipe.config.data.frames, height, width)[1]
    L, g = f * options.partitions, options.frames_per_level
    if L % g:
        raise ValueError(f"FIFO frames_per_level={g} must divide the queue's {L} latent frames "
                         f"({options.partitions} partitions of the model's {f})")
    levels, N = L // g, pipe.schedule.num_timesteps
    if steps is None:  # the least multiple of the queue's levels not below the checkpoint's steps
        steps = levels * max(1, math.ceil(pipe.config.sample.steps / levels))
        steps = min(steps, levels * (N // levels))
    if steps % levels or steps > N:
        raise ValueError(f"long='fifo' takes steps in multiples of its queue's {levels} levels ({L} latent frames, "
                         f"{g} per level) up to {levels * (N // levels)}: got steps={steps} "
                         f"(the paper's steps = f·n = {L})")
    pipe._check_schedule(sampler, steps)
    d = pipe.config.diffusion
    timesteps = spaced_timesteps(steps, N, d.timestep_spacing, d.steps_offset)
    return Queue(window=f, length=L, group=g, steps=steps, lag=steps // levels,
                 front=f // 2 if options.lookahead else 0, timesteps=tuple(timesteps))


def windows(total: int, window: int, front: int) -> list[tuple[int, int, int]]:
    """The model calls of one iteration over ``total`` frames (the first ``front`` only seen): ``(start, a, b)``
    reads frames ``start .. start + window`` and writes back ``a .. b``; the written parts tile
    ``front .. total``. The last window is moved back to end at ``total`` (it writes only what is left)."""
    out, pos = [], front
    while pos < total:
        start = min(pos - front, total - window)
        out.append((start, pos, start + window))
        pos = start + window
    return out


def windowed(fn, stateful: bool, spans: Sequence[tuple[int, int, int]], window: int):
    """``fn`` (a guided model function) over the windows ``spans``: one call each, with the window's levels
    ((B,) when they are all equal, as ordinary sampling calls it) and x0 estimates; outputs written back."""
    def run(x: torch.Tensor, t: torch.Tensor, state: Optional[SamplerState]) -> torch.Tensor:
        out = None
        for start, a, b in spans:
            xs = x[:, :, start:start + window]  # (B, C, f, h, w)
            ts = t if t.dim() == 1 else t[:, start:start + window]  # (B,) or (B, f)
            if ts.dim() == 2 and bool((ts == ts[:, :1]).all()):
                ts = ts[:, 0]  # one level: (B, f) -> (B,)
            if stateful:
                prev = None if state.pred_x0 is None else state.pred_x0[:, :, start:start + window]
                o = fn(xs, ts, state=SamplerState(state.step, state.levels[start:start + window], prev))
            else:
                o = fn(xs, ts)
            if out is None:
                out = x.new_zeros((x.shape[0], o.shape[1], *x.shape[2:]))  # (B, C or 2C, T, h, w)
            out[:, :, a:b] = o[:, :, a - start:b - start]
        return out

    if stateful:
        return lambda x, t, state: run(x, t, state)
    return lambda x, t: run(x, t, None)


@dataclass
class Step:
    """What ``on_step`` sees after each iteration: the model's input frames (front first) as indices of the
    video's latent frames, their levels and targets (schedule indices, CLEAN = -1), and the tensor bytes the
    queue, its front, its x0 estimates and the decoder's buffers hold (the memory that would grow with length)."""

    iteration: int
    frames: list[int]
    levels: list[int]
    targets: list[int]
    held_bytes: int


class FrameDecoder:
    """Latent frames in, pixel frames out, ``chunk`` latent frames at a time. A decoder that mixes frames (causal,
    temporal) decodes each chunk behind the ``context`` latent frames before it and keeps only the chunk's pixels,
    so memory does not grow with the video and a causal VAE's frame count stays 1 + f·(k − 1)."""

    def __init__(self, pipe: Pipeline, chunk: int, context: int, sink: Callable[[torch.Tensor], None]):
        ae = pipe.autoencoder
        self.pipe, self.chunk, self.sink = pipe, chunk, sink
        self.context = 0 if getattr(ae, "decodes_frames_alone", True) else context
        self.factor = ae.temporal_factor
        self.pending: list[torch.Tensor] = []
        self.before: Optional[torch.Tensor] = None  # the latent frames decoded last (the next chunk's context)

    def push(self, z: torch.Tensor) -> None:
        self.pending.append(z)  # (B, c, 1, h, w)
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        new = torch.cat(self.pending, dim=2)  # (B, c, m, h, w)
        self.pending = []
        whole = new if self.before is None else torch.cat([self.before, new], dim=2)
        pixels = self.pipe.decode(whole)  # (B, 3, T', H, W)
        if self.before is not None:  # keep the chunk's own frames: f per latent frame after the first
            pixels = pixels[:, :, -self.factor * new.shape[2]:]
        self.before = whole[:, :, -self.context:] if self.context else None
        self.sink(pixels)

    def nbytes(self) -> int:
        return sum(z.nbytes for z in self.pending) + (0 if self.before is None else self.before.nbytes)


class _State:
    """The queue itself: L latent frames, their progress (iterations since each started walking, negative while
    waiting) and video indices, their x0 estimates (a self-conditioned model), and the frames in front of it."""

    def __init__(self, q: Queue, x: torch.Tensor, progress: list[int], generators, self_cond: bool):
        self.q, self.x, self.progress, self.generators = q, x, progress, generators
        self.ids = list(range(q.length))
        self.x0: Optional[torch.Tensor] = None  # None until the first step (zeros, as trained)
        self.self_cond = self_cond
        self.past: list[tuple[torch.Tensor, int]] = []  # the last `front` frames that left, clean
        self.tail = progress[-1]  # progress of the last group to join

    def model_input(self) -> tuple[torch.Tensor, Optional[torch.Tensor], list[int], list[int], list[int]]:
        """The frames the model sees (front, then the queue), their x0 estimates, video indices, levels, targets."""
        q, P = self.q, self.q.front
        levels = [q.level(k) for k in self.progress]
        targets = [q.level(k + 1) if 0 <= k < q.steps else q.level(k) for k in self.progress]
        if not P:
            return self.x, self.x0, self.ids, levels, targets
        if self.past:  # the clean frames that left, the oldest repeated where fewer than `front` have
            front = [self.past[0]] * (P - len(self.past)) + self.past
            xs, ids = torch.cat([z for z, _ in front], dim=2), [i for _, i in front]
            front_levels, x0 = [CLEAN] * P, xs
        else:  # none yet: the head repeated, at its level
            xs, ids = self.x[:, :, :1].expand(-1, -1, P, -1, -1), [self.ids[0]] * P
            front_levels = [levels[0]] * P
            x0 = None if self.x0 is None else self.x0[:, :, :1].expand(-1, -1, P, -1, -1)
        x0 = None if self.x0 is None else torch.cat([x0, self.x0], dim=2)
        return (torch.cat([xs, self.x], dim=2), x0, ids + self.ids, front_levels + levels, front_levels + targets)

    def advance(self, x: torch.Tensor, x0: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Take the stepped frames (and their x0 estimates), move every frame on one iteration; return the frames
        that left the head (clean), after refilling the tail with as many fresh noise frames."""
        q = self.q
        self.x = x[:, :, q.front:]
        self.x0 = x0[:, :, q.front:] if self.self_cond else None
        self.progress = [k + 1 for k in self.progress]
        self.tail += 1
        left = []
        while self.progress[0] >= q.steps:  # the head group is clean: it leaves, a fresh group joins
            g = q.group
            left += [(self.x[:, :, i:i + 1], self.ids[i]) for i in range(g)]
            fresh = randn((self.x.shape[0], self.x.shape[1], g, *self.x.shape[3:]),
                          generator=self.generators).to(self.x.device, self.x.dtype)  # (B, c, g, h, w)
            self.x = torch.cat([self.x[:, :, g:], fresh], dim=2)
            if self.x0 is not None:
                self.x0 = torch.cat([self.x0[:, :, g:], torch.zeros_like(fresh)], dim=2)
            self.tail -= q.lag
            self.progress = self.progress[g:] + [self.tail] * g
            self.ids = self.ids[g:] + list(range(self.ids[-1] + 1, self.ids[-1] + 1 + g))
        if q.front:
            self.past = (self.past + left)[-q.front:]
        return left

    def nbytes(self) -> int:
        return (self.x.nbytes + (0 if self.x0 is None else self.x0.nbytes)
                + sum(z.nbytes for z, _ in self.past))


def _start(pipe: Pipeline, q: Queue, options: FIFO, conds: Conditions, generators, sampling: Sampling,
           latent: tuple[int, int, int, int]) -> tuple[torch.Tensor, list[int]]:
    """The first queue and its progress: a clip noised along the diagonal (init="clip"), or noise (init="noise")."""
    B, (c, f, h, w), L, g = len(generators), latent, q.length, q.group
    if options.init == "noise":  # frame q waits until its group's turn: the diagonal walked from its first row
        x = randn((B, c, L, h, w), generator=generators)
        return x.to(pipe.device), [-q.lag * (i // g) for i in range(L)]
    x_T = randn((B, c, f, h, w), generator=generators)
    clip = pipe.denoise(conds, x_T, generators, sampling.scale, sampling.sampler, q.steps, sampling.eta,
                        context_guidance=sampling.context_guidance, temporal_guidance=sampling.temporal_guidance)
    progress = [q.steps - q.lag * (i // g + 1) for i in range(L)]  # the head group one lag from clean
    levels = torch.tensor([q.level(k) for k in progress])  # (L,)
    source = clip[:, :, [min(i, f - 1) for i in range(L)]]  # (B, c, L, h, w): the clip, its last frame repeated
    noise = randn(source.shape, generator=generators).to(source.device, source.dtype)
    return pipe.schedule.q_sample(source, levels[None].expand(B, L), noise=noise), progress


@torch.no_grad()
def fifo(pipe: Pipeline, conds: Conditions, generators: Sequence[torch.Generator], sampling: Sampling,
         num_frames: int, height: int, width: int, options: FIFO = FIFO(),
         on_frames: Optional[Callable[[torch.Tensor], None]] = None,
         on_step: Optional[Callable[[Step], None]] = None) -> Optional[torch.Tensor]:
    """``num_frames`` pixel frames of each of ``len(generators)`` videos by FIFO-Diffusion (module docstring).

    ``conds``: the condition of one clip (``pipe.conditions(n, data.frames, ...)``, no given frames);
    ``generators``: one per video (seed + index). Returns the videos ``(B, 3, num_frames, H, W)``, or None when
    ``on_frames`` takes the decoded frames chunk by chunk (``(B, 3, k, H, W)`` each, in order).
    """
    q = fifo_queue(pipe, options, sampling.steps, sampling.sampler, height, width)
    frames = pipe.autoencoder.latent_shape(num_frames, height, width)[1]  # latent frames to make
    latent = pipe.autoencoder.latent_shape(pipe.config.data.frames, height, width)
    chunks: list[torch.Tensor] = []
    decoder = FrameDecoder(pipe, q.window, q.window, chunks.append if on_frames is None else on_frames)
    generators = list(generators)
    fn = pipe.guided_fn(conds, sampling.scale, sampling.context_guidance, sampling.temporal_guidance)
    stateful = "self_cond" in pipe.accepts
    model_fn = windowed(fn, stateful, windows(q.front + q.length, q.window, q.front), q.window)
    x, progress = _start(pipe, q, options, conds, generators, sampling, latent)
    state = _State(q, x.to(pipe.device), progress, generators, stateful)
    made, iteration = 0, 0
    d = pipe.config.diffusion
    while made < frames:
        x, x0, ids, levels, targets = state.model_input()
        out = plan_step(model_fn, pipe.schedule, x, torch.tensor(levels), torch.tensor(targets),
                        sampler=sampling.sampler, eta=sampling.eta, prediction=d.prediction,
                        learned_sigma=getattr(pipe.model, "learned_sigma", False), final_alpha=d.final_alpha,
                        generator=generators, state=SamplerState(pred_x0=x0))
        for z, _ in state.advance(out.x_prev, out.pred_x0)[:frames - made]:
            decoder.push(z)
            made += 1
        if on_step is not None:
            on_step(Step(iteration, ids, levels, targets, state.nbytes() + decoder.nbytes()))
        iteration += 1
    decoder.flush()
    return None if on_frames is not None else torch.cat(chunks, dim=2)
