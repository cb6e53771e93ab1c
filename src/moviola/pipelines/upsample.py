"""Super-resolution over chunks of frames: ``upsample(pipe, video, noise_level=50)`` runs an upsampler (a model
trained with ``conditions.low_res``: Video LDM's temporally aligned upsampler, W.A.L.T's latent SR) over a video of
any length, a chunk of frames at a time (Video LDM runs its upsampler "over chunks of 8 frames", §3.3).

**Chunks.** An upsampler's temporal layers were trained on clips of ``data.frames`` frames; a longer video is cut
into chunks of that length (``chunk_frames``), each upsampled on its own, as ``pipe(low_res=chunk, noise_level=N)``
upsamples it. Chunk c starts at ``c·(chunk_frames − overlap)``; the last is moved back to end at the video's last
frame, so every chunk has the model's length (and a causal VAE's valid frame count). A video no longer than one
chunk is one chunk of its own length. Where two chunks overlap, the first half of the overlap (rounded down) is
taken from the earlier chunk and the rest from the later one: every output frame comes from exactly one chunk, and
a chunk's frames nearest its ends are the ones dropped. ``overlap=0`` (the default, the paper's) puts the
boundaries at multiples of ``chunk_frames`` (the moved-back last chunk still overlaps the one before; the same
rule splits that overlap). A chunk sees no frame of its neighbours: with noise augmentation each frame is pinned to
its low-resolution frame, so the seams are those of the input; ``overlap`` gives each kept frame more temporal
context on both sides, at the cost of the overlapping frames sampled twice.

**Seeds.** Chunk c of video i draws from a generator seeded ``chunk_seed(seed + i, c)`` (pipelines/long_video.py):
chunk 0 is ``seed + i`` itself, so a video of one chunk is exactly ``pipe(low_res=video, seed=seed)``. Every chunk
gets the same noise level N (its ε drawn from its generator after its start noise, as ``pipe(...)`` draws it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from moviola.diffusion.schedule import randn
from moviola.pipelines.base import Pipeline
from moviola.pipelines.inputs import as_labels, as_prompts, checked_int, sampling_for, seeds_of
from moviola.pipelines.interpolate import per_video
from moviola.pipelines.long_video import chunk_seed


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, end)`` of the video a chunk upsamples, and ``[keep_start, keep_end)`` the ones it writes."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def frame_chunks(num_frames: int, chunk_frames: int, overlap: int = 0) -> list[Chunk]:
    """The chunks over ``num_frames`` frames (module docstring): each ``chunk_frames`` long (one shorter chunk for
    a shorter video), ``overlap`` frames between neighbours (more for the moved-back last one); the kept ranges
    tile the frames once, each overlap split at its middle (the earlier chunk keeps the first half, rounded down)."""
    num_frames = checked_int("num_frames", num_frames)
    chunk_frames = checked_int("chunk_frames", chunk_frames)
    overlap = checked_int("overlap", overlap, low=0, high=chunk_frames - 1, what=" (fewer than chunk_frames)")
    if num_frames <= chunk_frames:
        return [Chunk(0, num_frames, 0, num_frames)]
    starts, s = [], 0
    while True:
        s = min(s, num_frames - chunk_frames)
        starts.append(s)
        if s + chunk_frames >= num_frames:
            break
        s += chunk_frames - overlap
    bounds = [0] + [b + (a + chunk_frames - b) // 2 for a, b in zip(starts, starts[1:])] + [num_frames]
    return [Chunk(s, s + chunk_frames, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def chunk_length(pipe: Pipeline, chunk_frames: Optional[int]) -> int:
    """The chunk length: ``chunk_frames``, by default the upsampler's training length (``data.frames``)."""
    return pipe.config.data.frames if chunk_frames is None else checked_int("chunk_frames", chunk_frames)


@torch.no_grad()
def upsample(pipe: Pipeline, video, *, noise_level: Optional[int] = None, chunk_frames: Optional[int] = None,
             overlap: int = 0, prompt: Union[str, Sequence[str], None] = None, labels: Optional[Sequence[int]] = None,
             negative_prompt: Union[str, Sequence[str], None] = None, steps: Optional[int] = None,
             sampler: Optional[str] = None, cfg: Optional[float] = None, eta: Optional[float] = None,
             seed: Union[int, Sequence[int]] = 0, progress: bool = False,
             on_chunk: Optional[Callable[[int, Chunk, torch.Tensor], None]] = None) -> torch.Tensor:
    """``video`` (``(B, 3, T, h, w)`` / ``(3, T, h, w)`` in [-1, 1], or a video file) at ``conditions.low_res_factor`` ×
    its size, chunk by chunk (module docstring): ``(B, 3, T, H, W)`` in [-1, 1].

    ``noise_level``: the augmentation level of every chunk's low-resolution latent (default ``sample.noise_level``;
    a model trained with ``conditions.noise_level``). ``seed``: video i uses ``seed + i`` (or ``seed[i]``).
    ``on_chunk(c, chunk, pixels)`` sees each chunk's upsampled frames. Every argument is checked first.
    """
    low = pipe.prepare_low_res(video)  # (B, 3, T, h, w); refused for a model that is no upsampler
    n, T = low.shape[0], low.shape[2]
    sampling = sampling_for(pipe, steps, sampler, cfg, eta)
    prompts, labels = per_video(as_prompts(prompt, "prompt"), n, "prompts"), per_video(as_labels(labels), n, "labels")
    seeds = seeds_of(seed, n)
    chunks = frame_chunks(T, chunk_length(pipe, chunk_frames), overlap)
    for length in {c.end - c.start for c in chunks}:  # a chunk length the autoencoder cannot take
        pipe.upsampled_size(low[:, :, :length])
    _, H, W = pipe.upsampled_size(low[:, :, :chunks[0].end])
    pipe._warn_outside_training(chunks[0].end, H, W)
    first = pipe.conditions(n, chunks[0].end, H, W, labels=labels, prompt=prompts, negative_prompt=negative_prompt,
                            low_res=low[:, :, :chunks[0].end], noise_level=noise_level)  # every check, once
    from tqdm.auto import tqdm

    out = torch.zeros(n, 3, T, H, W)
    with tqdm(total=len(chunks), desc="upsampling", unit="chunk", disable=not progress) as bar:
        for index, chunk in enumerate(chunks):
            frames = chunk.end - chunk.start
            conds = first if index == 0 else pipe.conditions(
                n, frames, H, W, labels=labels, prompt=prompts, negative_prompt=negative_prompt,
                low_res=low[:, :, chunk.start:chunk.end], noise_level=noise_level)
            gens = [torch.Generator().manual_seed(chunk_seed(s, index)) for s in seeds]
            x_T = randn((n, *pipe.autoencoder.latent_shape(frames, H, W)), generator=gens)
            conds = pipe.noise_low_res(conds, gens)  # its ε drawn after the start noise, as pipe(...) draws it
            z = pipe.denoise(conds, x_T, gens, sampling.scale, sampling.sampler, sampling.steps, sampling.eta,
                             context_guidance=sampling.context_guidance, temporal_guidance=sampling.temporal_guidance)
            pixels = pipe.decode(z, conds)  # (B, 3, frames, H, W)
            out[:, :, chunk.keep_start:chunk.keep_end] = pixels[:, :, chunk.keep_start - chunk.start:
                                                                 chunk.keep_end - chunk.start]
            if on_chunk is not None:
                on_chunk(index, chunk, pixels)
            bar.update(1)
    return out
