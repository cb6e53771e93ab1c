"""Long videos from a model trained on short clips: ``pipe(..., num_frames=257, long="autoregressive"|"fifo")``.

Autoregressive prediction (Blattmann et al. 2023 §3.2; Gupta et al. 2023): the first clip is an ordinary sample; each
next clip is generated with the last K latent frames of the one before given as its first K frames (the
model's context frames, ``Conditioning.context`` / ``context_mask``, exactly as ``pipe(frames={...})``
gives them), under classifier-free guidance and the call's ``context_guidance``. The clips overlap by
those frames, and the video is their concatenation without the repeats.

- A frame-wise autoencoder: the context is the previous clip's last K latent frames themselves (after
  its given frames were put back), so the overlap is exact in latent space.
- A causal VAE (``temporal_factor`` f > 1, ``encodes_frames_alone`` False): latent frame 0 stands for one
  pixel frame and each later one for f, so a clip's last latent frames cannot start another clip as they
  are. As Gupta et al. do, the previous clip's last ``1 + f·(K − 1)`` decoded pixel frames are encoded again
  (K = 2, f = 4: the last 5 frames → 2 latent frames) and start the next clip, whose first
  ``1 + f·(K − 1)`` decoded frames (those frames again) are dropped.

K (``Autoregressive(context_frames=K)``) defaults to 2 for a model trained on prefixes of frames
(``conditions.context_mode`` prefix, prefix2 or any: Blattmann et al. continue from 2; for prefix and any, whose
prefixes reach half the clip, only when the clip has 4 latent frames or more, else 1) and to 1 for one
trained on the first frame only (first, ends, keyframes), and must leave a frame to generate. Clip c of
video i draws its noise from a generator seeded with ``chunk_seed(seed + i, c)`` (clip 0: ``seed + i``
itself, so the first clip is the ordinary sample of that seed): a video is a pure function of its seed.
Each clip is decoded whole (a temporal or causal decoder sees a whole clip, as trained); only the video's
pixels grow with its length. ``image=`` / ``frames=`` give frames of the first clip (indices 0 .. F − 1).

FIFO-Diffusion: pipelines/fifo.py. ``generate_long`` checks every argument against the model before any
compute (one-line ValueErrors: an unknown mode, fewer frames than one clip, a model without context
frames for autoregressive, given frames or an upsampler's input for FIFO) and runs either method batch
by batch under one progress bar over the video's frames.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from moviola.diffusion.schedule import randn
from moviola.pipelines.fifo import FIFO, fifo, fifo_queue
from moviola.pipelines.inputs import Sampling, checked_int, warn

# ``Pipeline`` and ``Conditions`` in the annotations are pipelines/base.py's, not imported: base.py's
# ``Pipeline.__call__(long=...)`` calls into this module, and imports run one way (tests/test_layers.py)

MODES = ("autoregressive", "fifo")
PREFIX_MODES = ("prefix", "prefix2", "any")  # context modes that train on prefixes of more than one frame
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Autoregressive:
    """Autoregressive prediction's options (module docstring): ``pipe(..., long=Autoregressive(context_frames=1))``."""

    context_frames: Optional[int] = None  # K latent frames carried into the next clip; None: 2 or 1 (docstring)

    def __post_init__(self):
        k = self.context_frames
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"Autoregressive context_frames must be a positive int, got {k!r}")
        if k is not None:
            object.__setattr__(self, "context_frames", int(k))  # a numpy int too


LongOptions = Union[Autoregressive, FIFO]


def long_options(long: Union[str, LongOptions]) -> LongOptions:
    """``long=`` as options: a mode name (its defaults) or an options object."""
    if isinstance(long, (Autoregressive, FIFO)):
        return long
    if isinstance(long, str) and long in MODES:
        return Autoregressive() if long == "autoregressive" else FIFO()
    raise ValueError(f"long={long!r}: choose one of {list(MODES)} (or pass Autoregressive(...) / FIFO(...) options)")


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of clip ``chunk`` of the video of ``seed``: ``seed`` for clip 0, else a 64-bit mix of both
    (SplitMix64's finalizer), so neighbouring seeds and clips get unrelated streams."""
    if chunk == 0:
        return seed
    x = (seed + chunk * 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def context_frames(pipe: Pipeline, options: Autoregressive, latent_frames: int) -> int:
    """K, checked: a model with context frames, and at least one frame of a clip left to generate."""
    c = pipe.config.conditions
    if "context" not in pipe.accepts:
        raise ValueError("long='autoregressive' continues each clip from the last frames of the one before: it needs a "
                         "model trained with context frames (conditions.context_frames), which this one is not; "
                         "use long='fifo'")
    trained = {"prefix2": 2, "prefix": max(1, latent_frames // 2), "any": max(1, latent_frames // 2)}.get(
        c.context_mode, 1)
    k = options.context_frames
    if k is None:
        k = min(2, trained) if c.context_mode in PREFIX_MODES else 1
    if k >= latent_frames:
        raise ValueError(f"context_frames={k} leaves nothing to generate: this model's clips have {latent_frames} "
                         f"latent frames; give at most {latent_frames - 1}")
    if k > trained:
        warn(f"context_frames={k}: this model was trained with up to {trained} given frames "
             f"(conditions.context_mode={c.context_mode}): how it continues from more is a guess")
    return k


def overlap_frames(pipe: Pipeline, k: int) -> int:
    """The pixel frames K context latent frames stand for: K, or 1 + f·(K − 1) for a causal VAE."""
    f = pipe.autoencoder.temporal_factor
    return k if f == 1 else 1 + f * (k - 1)


@torch.no_grad()
def autoregressive(pipe: Pipeline, conds: Conditions, seeds: Sequence[int], sampling: Sampling, num_frames: int,
                   height: int, width: int, k: int,
                   on_chunk: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
                   on_frames: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """``num_frames`` pixel frames of each video (``seeds[i]`` = seed + i) by autoregressive prediction.

    ``conds``: the first clip's condition (``pipe.conditions(n, data.frames, ...)``); ``k``: the context latent
    frames (:func:`context_frames`). ``on_chunk(c, z, pixels)`` sees each clip's latent (given frames put back)
    and its decoded pixels; ``on_frames`` each clip's new pixel frames. Returns ``(B, 3, num_frames, H, W)``.
    """
    ae, F = pipe.autoencoder, pipe.config.data.frames
    latent = ae.latent_shape(F, height, width)  # (c, f, h, w)
    overlap = overlap_frames(pipe, k)
    steps = pipe.config.sample.steps if sampling.steps is None else sampling.steps
    parts, made, chunk, clip_conds = [], 0, 0, conds
    while made < num_frames:
        gens = [torch.Generator().manual_seed(chunk_seed(s, chunk)) for s in seeds]
        if chunk:  # the last frames of the clip before, as this clip's first k given frames
            if ae.temporal_factor == 1:
                ctx = z[:, :, -k:]  # (B, c, k, h, w)
            else:  # a causal VAE: encode the last 1 + f·(k − 1) pixel frames again (Gupta et al.)
                ctx = ae.encode(pixels[:, :, -overlap:].to(pipe.device))  # (B, c, k, h, w)
            context = torch.zeros(len(seeds), *latent)  # (B, c, f, h, w)
            mask = torch.zeros(len(seeds), 1, latent[1], 1, 1)  # (B, 1, f, 1, 1)
            context[:, :, :k], mask[:, :, :k] = ctx.float().cpu(), 1
            clip_conds = pipe.with_frames(conds, context, mask)
        x_T = randn((len(seeds), *latent), generator=gens)
        z = pipe.denoise(clip_conds, x_T, gens, sampling.scale, sampling.sampler, steps, sampling.eta,
                         context_guidance=sampling.context_guidance, temporal_guidance=sampling.temporal_guidance)
        z = pipe.keep_given(z, clip_conds)
        pixels = pipe.decode(z)  # (B, 3, F, H, W)
        new = pixels[:, :, (overlap if chunk else 0):][:, :, :num_frames - made]
        if on_chunk is not None:
            on_chunk(chunk, z.cpu(), pixels)
        if on_frames is not None:
            on_frames(new)
        parts.append(new)
        made += new.shape[2]
        chunk += 1
    return torch.cat(parts, dim=2)


def check_long(pipe: Pipeline, options: LongOptions, sampling: Sampling, num_frames, height: int, width: int,
               given: dict, low_res) -> tuple[int, Optional[int]]:
    """Every argument against the model, before any compute: the frame count (and, autoregressive, K)."""
    name = "autoregressive" if isinstance(options, Autoregressive) else "fifo"
    if low_res is not None:
        raise ValueError(f"long={name!r} does not upsample: generate the long video, then upsample it (low_res=)")
    if num_frames is None:
        raise ValueError(f"long={name!r}: pass num_frames, the length of the video")
    T, F = checked_int("num_frames", num_frames), pipe.config.data.frames
    pipe.autoencoder.latent_shape(T, height, width)  # a frame count (or size) the autoencoder cannot take
    f = pipe.autoencoder.latent_shape(F, height, width)[1]
    if T < F:
        raise ValueError(f"num_frames={T} is fewer than one clip of this model ({F} frames): a long video has at "
                         f"least {F}; for fewer, sample without long=")
    if name == "fifo":
        if given:
            raise ValueError("long='fifo' takes no given frames (image=, frames=): its queue has no place for them; "
                             "use long='autoregressive' to start a long video from an image")
        fifo_queue(pipe, options, sampling.steps, sampling.sampler, height, width)  # the queue's own checks
        return T, None
    bad = [i for i in given if not 0 <= i < F]
    if bad:
        raise ValueError(f"given frame {bad[0]}: in a long video given frames are frames of its first clip, 0 to {F - 1}")
    return T, context_frames(pipe, options, f)


def generate_long(pipe: Pipeline, long, sampling: Sampling, *, n: int, seed: int, num_frames, height, width,
                  labels, prompt, negative_prompt, given: dict, low_res, noise_level, fps, batch_size: int,
                  progress: bool, cfg) -> torch.Tensor:
    """``Pipeline.__call__(..., long=...)``: the arguments checked (its own checks done), then batch by batch."""
    options = long_options(long)
    c = pipe.config
    H = c.data.size if height is None else checked_int("height", height)
    W = c.data.size if width is None else checked_int("width", width)
    if noise_level is not None:
        raise ValueError("noise_level is an upsampler's: long videos take none")
    T, k = check_long(pipe, options, sampling, num_frames, H, W, given, low_res)
    pipe._warn_outside_training(c.data.frames, H, W)  # the clips are the training length; the size may differ
    conds = pipe.conditions(n, c.data.frames, H, W, labels=labels, prompt=prompt, negative_prompt=negative_prompt,
                            frames=given, fps=fps)
    ar = isinstance(options, Autoregressive)  # its later clips always give frames: guidance has a target
    pipe._warn_unused_guidance(conds, None if ar else cfg, sampling.scale, negative_prompt,
                               1.0 if ar else sampling.context_guidance)
    from tqdm.auto import tqdm

    videos = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        part = conds.index(idx)
        with tqdm(total=T, desc=f"{'autoregressive' if ar else 'fifo'} video", unit="frame",
                  disable=not progress) as bar:
            chunks: list[torch.Tensor] = []

            def take(pixels: torch.Tensor) -> None:
                chunks.append(pixels)
                bar.update(pixels.shape[2])

            if ar:
                autoregressive(pipe, part, [seed + i for i in idx], sampling, T, H, W, k, on_frames=take)
            else:
                gens = [torch.Generator().manual_seed(seed + i) for i in idx]
                fifo(pipe, part, gens, sampling, T, H, W, options, on_frames=take)
        videos.append(torch.cat(chunks, dim=2))
    return torch.cat(videos)
