"""Frame interpolation: ``interpolate(pipe, video, factor=4)`` keeps a video's frames as keyframes and generates
the frames between them (Video LDM §3.1.1, "temporal interpolation for high frame rates").

The model is one trained with context frames in keyframes mode (``conditions.context_frames: true``,
``conditions.context_mode: keyframes``): every ``KEYFRAME_STRIDE`` = 4th frame of its clip given, the three frames
between each two generated. Its clip of L frames (``data.frames``) holds K = (L − 1) // 4 + 1 keyframes, and
one window of the interpolation is one such clip: K consecutive frames of the input placed at its frames
0, 4, 8, ..., given as ``c = (m ∘ z, m)`` (``Pipeline.with_frames``), the rest sampled. Windows share their
boundary keyframe; when the input's frames do not fill the last window, it is moved back to end at the last
frame, and writes only frames not written before (its other keyframes are given, so every window runs at the
model's clip length; an input shorter than one window is one shorter window). A video of T frames becomes
4(T − 1) + 1 = 4T − 3 frames: input frame j is output frame 4j, kept exactly (pixels in: the input pixels are
put back after decoding; latents in: the given latents are put back).

``factor=16`` runs two levels in sequence with one set of weights: T → 4T − 3 → 16T − 15. The level flag of a
model trained with ``conditions.fps`` is the frame rate of its training clips: level 1 (T → 4T, clips at stride 4)
gets ``fps = data.fps / 4``, level 2 (4T → 16T, stride 1) ``fps = data.fps``; a model without it gets no flag.
``level=2`` with ``factor=4`` runs the second level alone. The levels are chained in latent space (the input is
encoded once and the result decoded once: level 1's frames are not decoded and encoded again).

Each window is sampled as ``pipe(...)`` samples a clip: the call's prompt or labels (one, or one per video) are
its condition, guided like given frames (``Pipeline.with_frames``), with the call's ``cfg``, ``context_guidance``
and sampler. Window w of level l of video i draws its noise from a generator seeded with
``chunk_seed(seed + i, (l − 1)·2³² + w)`` (level 1's window 0: ``seed + i`` itself; ``chunk_seed`` of
pipelines/long_video.py), so a video is a pure function of its seed. With pixels in, each window of the last level is decoded whole (a temporal decoder sees a
clip, as trained) and only the frames it writes are kept.

Refused with a one-line ValueError before anything is encoded: a model without context frames or not trained on
keyframes, an autoencoder that packs several frames into a latent frame (a causal VAE), a clip too short for two
keyframes, a factor other than 4 or 16, fewer than 2 input frames.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from moviola.conditioning.context import KEYFRAME_STRIDE
from moviola.diffusion.schedule import randn
from moviola.pipelines.base import Conditions, Pipeline
from moviola.pipelines.inputs import Sampling, as_labels, as_prompts, checked_int, sampling_for, seeds_of, video_tensor
from moviola.pipelines.long_video import chunk_seed


S = KEYFRAME_STRIDE
FACTORS = (S, S * S)  # one level, two levels
LEVELS = (1, 2)


def keyframes_per_window(pipe: Pipeline) -> int:
    """K, the keyframes one window (one clip of the model) holds; a one-line ValueError for a model that
    cannot interpolate."""
    ae = pipe.autoencoder
    if "context" not in pipe.accepts:
        raise ValueError(NO_CONTEXT)
    frame_wise = ae.temporal_factor == 1 and ae.encodes_frames_alone
    return keyframes_in(pipe.config, ae.temporal_factor if frame_wise else max(2, ae.temporal_factor))


NO_CONTEXT = ("interpolation needs a model trained with context frames in keyframes mode (conditions.context_frames: "
              "true, conditions.context_mode: keyframes); this one takes no context frames")


def keyframes_in(config, temporal_factor: int) -> int:
    """K for a run config whose autoencoder packs ``temporal_factor`` frames into a latent frame, read from the
    config alone (a cascade checks its stages before loading any weights); a one-line ValueError otherwise."""
    c = config.conditions
    if not c.context_frames:
        raise ValueError(NO_CONTEXT)
    if c.context_mode != "keyframes":
        raise ValueError(f"interpolation needs a model trained on keyframes (conditions.context_mode: keyframes, every "
                         f"{S}th frame given); this one was trained with context_mode {c.context_mode!r}")
    if temporal_factor != 1:
        raise ValueError(f"interpolation needs a frame-wise autoencoder (a latent frame per frame); this model's packs "
                         f"{temporal_factor} frames into a latent frame, so a keyframe is no latent frame of its own")
    frames = config.data.frames
    if frames < S + 1:
        raise ValueError(f"this model's clips of {frames} frames hold one keyframe: interpolation needs clips of at "
                         f"least {S + 1} frames (data.frames)")
    return (frames - 1) // S + 1


def levels_of(factor, level=None) -> tuple[int, ...]:
    """The levels a call runs: factor 4 → (1,) (or ``(level,)``), factor 16 → (1, 2)."""
    factor = checked_int("factor", factor)
    if factor not in FACTORS:
        raise ValueError(f"factor={factor}: interpolate by {S} (one level: T frames → {S}T − {S - 1}) or {S * S} "
                         f"(two levels: T → {S * S}T − {S * S - 1})")
    if level is not None:
        level = checked_int("level", level)
        if level not in LEVELS:
            raise ValueError(f"level={level}: the interpolation levels are 1 (T → 4T) and 2 (4T → 16T)")
        if factor == S * S and level != 1:
            raise ValueError(f"level={level} with factor={factor}: the two levels start at level 1; for the second "
                             f"level alone pass factor={S}, level=2")
    return (level or 1,) if factor == S else LEVELS


def level_fps(pipe: Pipeline, level: int) -> Optional[float]:
    """The level flag: for a model trained with ``conditions.fps``, level 1 (T → 4T, clips at stride 4)
    ``data.fps / 4`` and level 2 (4T → 16T, stride 1) ``data.fps``; None for a model without it."""
    if "fps" not in pipe.accepts:
        return None
    rate = float(pipe.config.data.fps)
    return rate / S if level == 1 else rate


def interpolated_frames(frames: int, factor: int) -> int:
    """Frames of a ``frames``-frame video interpolated by ``factor`` (4: 4T − 3; 16: 16T − 15)."""
    return factor * (frames - 1) + 1


def keyframe_windows(num_keyframes: int, per_window: int) -> list[tuple[int, int, int]]:
    """The windows over ``num_keyframes`` input frames, K = ``per_window`` keyframes each: ``(first, count,
    writes_from)`` — the window's first keyframe, its keyframe count, and the first output frame it writes
    (output frame 4j is keyframe j; a window writes up to its last keyframe's output frame). Windows share their
    boundary keyframe; the last is moved back to end at the last keyframe."""
    if num_keyframes <= per_window:
        return [(0, num_keyframes, 0)]
    out, first, done = [], 0, -1  # done: the last output frame written
    while done < S * (num_keyframes - 1):
        first = min(first, num_keyframes - per_window)
        out.append((first, per_window, done + 1))
        done = S * (first + per_window - 1)
        first += per_window - 1
    return out


def window_seed(seed: int, level: int, window: int) -> int:
    """The seed of window ``window`` of level ``level`` of the video of ``seed``: ``chunk_seed(seed, (level − 1)·2³²
    + window)``, so level 1's window 0 is ``seed`` itself and no two windows of any level share a stream."""
    return chunk_seed(seed, ((level - 1) << 32) + window)


def count_windows(frames: int, factor: int, per_window: int, level: Optional[int] = None) -> int:
    """Windows (model samples) an interpolation of ``frames`` frames by ``factor`` takes: a progress bar's total."""
    total = 0
    for _ in levels_of(factor, level):
        total += len(keyframe_windows(frames, per_window))
        frames = interpolated_frames(frames, S)
    return total


def per_video(values, n: int, name: str) -> Optional[list]:
    """Prompts or labels for n videos: one for all (repeated) or one per video."""
    if values is None:
        return None
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f"{len(values)} {name} for {n} videos: give one, or one per video")
    return list(values)


@torch.no_grad()
def interpolate(pipe: Pipeline, video=None, *, latents: Optional[torch.Tensor] = None, factor: int = 4,
                level: Optional[int] = None, prompt: Union[str, Sequence[str], None] = None,
                labels: Optional[Sequence[int]] = None, negative_prompt: Union[str, Sequence[str], None] = None,
                steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                eta: Optional[float] = None, context_guidance: float = 1.0, temporal_guidance: float = 0.0,
                seed: Union[int, Sequence[int]] = 0, progress: bool = False,
                on_window: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> torch.Tensor:
    """``video`` (pixels ``(B, 3, T, H, W)`` or ``(3, T, H, W)`` in [-1, 1], or a video file) or ``latents``
    (``(B, c, T, h, w)``, the pipeline's latent space) with ``factor − 1`` frames generated between each two of its
    frames: ``(B, ·, factor·(T − 1) + 1, ·, ·)``, pixels for pixels, latents for latents (module docstring).

    ``seed``: video i uses ``seed + i`` (or ``seed[i]`` for a list). ``on_window(level, window, z)`` sees each
    window's latent (given frames put back). Every argument is checked before anything is encoded.
    """
    K = keyframes_per_window(pipe)
    levels = levels_of(factor, level)
    sampling = sampling_for(pipe, steps, sampler, cfg, eta, context_guidance, temporal_guidance)
    pixels, z, (H, W) = _inputs(pipe, video, latents)
    given = z if pixels is None else pixels
    n, T = given.shape[0], given.shape[2]
    if T < 2:
        raise ValueError(f"interpolation needs at least 2 frames (the keyframes), got {T}")
    prompts, labels = per_video(as_prompts(prompt, "prompt"), n, "prompts"), per_video(as_labels(labels), n, "labels")
    seeds = seeds_of(seed, n)
    clip = S * (min(T, K) - 1) + 1
    pipe._warn_outside_training(clip, H, W)  # windows are at most the training length: only the size can differ
    conds = [pipe.conditions(n, clip, H, W, labels=labels, prompt=prompts, negative_prompt=negative_prompt,
                             fps=level_fps(pipe, lv)) for lv in levels]
    if pixels is not None:  # every check done: encode
        z = pipe.autoencoder.encode(pixels.to(pipe.device)).float().cpu()  # (B, c, T, h, w)
    from tqdm.auto import tqdm

    out_pixels = None
    with tqdm(total=count_windows(T, factor, K, level), desc="interpolation", unit="window",
              disable=not progress) as bar:
        for i, lv in enumerate(levels):
            last = i == len(levels) - 1 and pixels is not None
            z, decoded = _level(pipe, z, conds[i], K, sampling, seeds, lv, decode=last, on_window=on_window,
                                bar=bar)
            out_pixels = decoded if last else out_pixels
    if pixels is None:
        return z
    out_pixels[:, :, ::S ** len(levels)] = pixels  # the input frames, exactly
    return out_pixels


def _inputs(pipe: Pipeline, video, latents) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], tuple[int, int]]:
    """(pixels, latents, (H, W)): one of the two given, checked."""
    if (video is None) == (latents is None):
        raise ValueError("give the video to interpolate as video= (pixels in [-1, 1], or a video file) or as "
                         "latents=, one of the two")
    if video is not None:
        pixels = video_tensor(video, "video")
        pipe.autoencoder.latent_shape(pixels.shape[2], *pixels.shape[3:])  # a size the autoencoder cannot take
        return pixels, None, tuple(pixels.shape[3:])
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or not latents.is_floating_point():
        raise ValueError(f"latents must be a float tensor (B, c, T, h, w), got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    c = pipe.autoencoder.latent_channels
    if latents.shape[1] != c:
        raise ValueError(f"latents have {latents.shape[1]} channels; this model's autoencoder has {c}")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents must be finite (they hold NaN or inf values)")
    f = pipe.autoencoder.spatial_factor
    return None, latents.detach().float().cpu(), (latents.shape[3] * f, latents.shape[4] * f)


def _level(pipe: Pipeline, z: torch.Tensor, conds: Conditions, K: int, sampling: Sampling, seeds: Sequence[int],
           level: int, decode: bool, on_window, bar) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One level: latents (B, c, T, h, w) → (B, c, 4T − 3, h, w), and their pixels when ``decode``."""
    B, c, T, h, w = z.shape
    out = torch.zeros(B, c, interpolated_frames(T, S), h, w)
    pixels = None
    for index, (first, count, writes_from) in enumerate(keyframe_windows(T, K)):
        L, start = S * (count - 1) + 1, S * first  # the window's frames, its first output frame
        context = torch.zeros(B, c, L, h, w)  # (B, c, L, h, w): the keyframes at 0, 4, 8, ...
        mask = torch.zeros(B, 1, L, 1, 1)  # (B, 1, L, 1, 1)
        context[:, :, ::S], mask[:, :, ::S] = z[:, :, first:first + count], 1
        window = pipe.with_frames(conds, context, mask)
        gens = [torch.Generator().manual_seed(window_seed(s, level, index)) for s in seeds]
        x_T = randn((B, c, L, h, w), generator=gens)
        zw = pipe.denoise(window, x_T, gens, sampling.scale, sampling.sampler, sampling.steps, sampling.eta,
                          context_guidance=sampling.context_guidance, temporal_guidance=sampling.temporal_guidance)
        zw = pipe.keep_given(zw, window).float().cpu()  # (B, c, L, h, w), the keyframes exactly
        out[:, :, writes_from:start + L] = zw[:, :, writes_from - start:]
        if decode:
            decoded = pipe.decode(zw)  # (B, 3, L, H, W): the window whole, as a temporal decoder was trained
            if pixels is None:
                pixels = torch.zeros(B, 3, out.shape[2], *decoded.shape[3:])
            pixels[:, :, writes_from:start + L] = decoded[:, :, writes_from - start:]
        if on_window is not None:
            on_window(level, index, zw)
        bar.update(1)
    return out, pixels
