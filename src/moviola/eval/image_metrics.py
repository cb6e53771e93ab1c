"""FID and Inception Score of images and of video frames, with the FID Inception (``inception.py``).

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the 2048-d pool3
features of two image sets: ``inception_features`` streams images through the network into a
``FeatureStats`` (float64 mean and covariance; the unbiased N - 1 covariance, as pytorch-fid),
and ``fid_from_stats`` compares two of them. Real-set stats can be saved once with
``FeatureStats.save`` and reused; their ``meta`` records the network's weights digest and the
resize, and ``fid_from_stats`` refuses to compare stats whose detectors differ.

Inception Score (Salimans et al. 2016), computed as the original code does (openai/improved-gan,
also torch-fidelity): p(y|x) = softmax over all 1008 bias-free logits; the samples are cut into
``splits`` consecutive parts (part i = rows ``i*N//splits`` to ``(i+1)*N//splits``); for each part
``exp(mean_x KL(p(y|x) || p(y)))`` with p(y) the part's mean prediction; the result is the mean
and the population standard deviation (``np.std``) over the parts. The original code uses the
samples in the given order; torch-fidelity first permutes them with
``np.random.RandomState(2020).permutation(N)``, which ``shuffle_seed=2020`` reproduces.

Both are image metrics: for videos they score frames, and say nothing about motion. The frame
helpers turn ``(B, C, T, H, W)`` videos (float in [-1, 1] or uint8) or video / image files into
uint8 ``(N, 3, H, W)`` frame batches, the network's input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from moviola.eval.frechet import FeatureStats, frechet_distance_from_stats
from moviola.eval.inception import FIDInceptionV3

__all__ = [
    "DETECTOR_NAME",
    "fid_from_stats",
    "frames_from_files",
    "frames_from_videos",
    "inception_features",
    "inception_score",
    "to_uint8_frames",
]

DETECTOR_NAME = "inception-2015-12-05/pool3"
# [-1, 1] pixels a little outside the range (decoder overshoot) are clamped; values beyond this
# are a different convention (0..1 or 0..255 floats) and are refused instead of silently clipped
_RANGE_SLACK = 0.5

ImageBatch = Union[torch.Tensor, np.ndarray]


# ----------------------------------------------------------------------------- frames


def to_uint8_frames(videos: ImageBatch, frame_stride: int = 1) -> torch.Tensor:
    """Videos ``(B, C, T, H, W)`` -> uint8 frames ``(B * T', 3, H, W)``, frames of one video adjacent.

    Float input must be pixels in [-1, 1] (the project layout); it is mapped by
    ``round((x + 1) * 127.5)`` and clamped, exactly as ``moviola.video.to_uint8`` writes files, so
    frames scored straight from a sampler equal the frames of the saved videos. uint8 input is
    taken as is. One channel is repeated to RGB. ``frame_stride`` keeps frames 0, s, 2s, ...
    The result stays on the input's device.
    """
    x = torch.as_tensor(videos)
    if x.ndim != 5:
        raise ValueError(f"videos must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"videos must have 1 or 3 channels in dim 1 (B, C, T, H, W), got shape {tuple(x.shape)}")
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive int, got {frame_stride!r}")
    x = x[:, :, ::frame_stride]
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"videos must be float pixels in [-1, 1] or uint8, got dtype {x.dtype}")
        if x.numel():
            if not torch.isfinite(x).all():
                raise ValueError("videos contain NaN or inf values")
            lo, hi = float(x.min()), float(x.max())
            if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
                raise ValueError(f"float videos must be pixels in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                                 "pass uint8 for 0..255 data")
        x = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)  # (B, C, T, H, W) -> (B*T, C, H, W)


def frames_from_videos(videos: Iterable[ImageBatch], frame_stride: int = 1) -> Iterator[torch.Tensor]:
    """Lazily apply :func:`to_uint8_frames` to each ``(B, C, T, H, W)`` batch of an iterable
    (e.g. a generator that samples batches), for :func:`inception_features`."""
    for batch in videos:
        yield to_uint8_frames(batch, frame_stride)


def _media_files(paths: Sequence[Union[str, Path]]) -> list[Path]:
    from moviola.data.folders import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffixes = set(IMAGE_SUFFIXES) | set(VIDEO_SUFFIXES)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes
                           and not q.name.startswith("."))
            if not found:
                raise ValueError(f"no image or video file ({', '.join(sorted(suffixes))}) under {str(p)!r}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {str(p)!r}")
    return files


def frames_from_files(
    paths: Union[str, Path, Sequence[Union[str, Path]]],
    frame_stride: int = 1,
    max_frames: Optional[int] = None,
) -> Iterator[torch.Tensor]:
    """uint8 ``(T, 3, H, W)`` frames of each file, one file at a time (for :func:`inception_features`).

    ``paths``: files or directories (searched recursively, sorted; hidden files skipped). Image
    files (png, jpg, ...) give one frame each; video files (mp4, gif, webm, avi) give frames
    ``0, s, 2s, ...`` up to ``max_frames`` per video. A png is one image: a frame grid written by
    ``moviola.save_video(..., "x.png")`` would be scored as a single picture.
    """
    from moviola.data.folders import IMAGE_SUFFIXES
    from moviola.video import read_image, read_video

    if isinstance(paths, (str, Path)):
        paths = [paths]
    for f in _media_files(paths):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            frames = read_image(f)[None]  # (1, H, W, 3)
        else:
            frames = read_video(f, stride=frame_stride, max_frames=max_frames)  # (T, H, W, 3)
        yield torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)


# ----------------------------------------------------------------------------- features


def _as_image_batch(item: ImageBatch) -> torch.Tensor:
    x = torch.as_tensor(item)
    if x.ndim == 3:
        x = x[None]  # one image (3, H, W)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, 3, H, W) in 0..255, got dtype {x.dtype}; convert "
                         "[-1, 1] videos with to_uint8_frames")
    if x.ndim != 4 or x.shape[1] != 3:
        hint = " (channels last? permute to (N, 3, H, W))" if x.ndim == 4 and x.shape[-1] == 3 else ""
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(x.shape)}{hint}")
    return x


def _rebatch(images: Iterable[ImageBatch], batch_size: int) -> Iterator[torch.Tensor]:
    """Regroup batches of any size into ``batch_size`` images; a change of image size starts a new batch."""
    pending: list[torch.Tensor] = []
    count = 0
    for item in images:
        x = _as_image_batch(item)
        if pending and x.shape[1:] != pending[0].shape[1:]:
            yield torch.cat(pending)
            pending, count = [], 0
        while x.shape[0]:
            take = min(batch_size - count, x.shape[0])
            pending.append(x[:take])
            count += take
            x = x[take:]
            if count == batch_size:
                yield torch.cat(pending)
                pending, count = [], 0
    if pending:
        yield torch.cat(pending)


def _detector_meta(model: FIDInceptionV3) -> dict:
    return {"detector": DETECTOR_NAME, "weights_sha256": model.weights_sha256,
            "resize": "bilinear-299" if model.resize_input else "none"}


def inception_features(
    images: Union[ImageBatch, Iterable[ImageBatch]],
    model: FIDInceptionV3,
    batch_size: int = 50,
    *,
    stats: Optional[FeatureStats] = None,
    keep_logits: bool = False,
) -> Union[FeatureStats, tuple[FeatureStats, torch.Tensor]]:
    """Stream uint8 images through the FID Inception and accumulate their pool3 features.

    ``images``: one uint8 ``(N, 3, H, W)`` tensor / array, or an iterable of them (or of single
    ``(3, H, W)`` images), e.g. ``frames_from_videos(...)`` or ``frames_from_files(...)``. They
    are regrouped into batches of ``batch_size`` on the model's device. Features are added to
    ``stats`` (a new ``FeatureStats`` if None) and returned; its ``meta`` names the detector.
    ``keep_logits=True`` also returns the ``(N, 1008)`` float32 bias-free logits on the CPU, in
    input order, for :func:`inception_score` (one pass for FID and IS).
    """
    if not isinstance(model, FIDInceptionV3):
        raise TypeError(f"model must be an FIDInceptionV3 (see load_inception), got {type(model).__name__}")
    if model.training:
        raise ValueError("the Inception model is in training mode (batch norm would use batch statistics); "
                         "call model.eval()")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    meta = _detector_meta(model)
    if stats is None:
        stats = FeatureStats(meta=meta)
    elif not isinstance(stats, FeatureStats):
        raise TypeError(f"stats must be a FeatureStats or None, got {type(stats).__name__}")
    elif stats.meta and stats.meta != meta:
        raise ValueError(f"stats were collected with another detector setup: {stats.meta!r} vs {meta!r}")
    else:
        stats.meta = meta
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]  # one batch, not an iterable of single images
    logits: list[torch.Tensor] = []
    seen = 0
    with torch.inference_mode():
        for batch in _rebatch(images, batch_size):
            pool3, batch_logits = model(batch)
            stats.update(pool3)
            seen += batch.shape[0]
            if keep_logits:
                logits.append(batch_logits.float().cpu())
    if seen == 0:
        raise ValueError("no images were given")
    if keep_logits:
        return stats, torch.cat(logits)
    return stats


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two sets of pool3 stats (unbiased covariances, as pytorch-fid).

    Stats whose ``meta`` disagree on the detector, its weights digest or the resize are refused:
    such numbers are not comparable. Stats without those entries (e.g. computed elsewhere) are
    compared as they are.
    """
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, FeatureStats):
            raise TypeError(f"{name} must be FeatureStats, got {type(s).__name__}")
    for key in ("detector", "weights_sha256", "resize"):
        if key in a.meta and key in b.meta and a.meta[key] != b.meta[key]:
            raise ValueError(f"the two stats come from different feature extractors: "
                             f"{key} {a.meta[key]!r} vs {b.meta[key]!r}")
    return frechet_distance_from_stats(a, b, ddof=1)


# ----------------------------------------------------------------------------- inception score


def inception_score(
    predictions: ImageBatch,
    splits: int = 10,
    *,
    probs: bool = False,
    shuffle_seed: Optional[int] = None,
) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` parts (see the module docstring).

    ``predictions``: ``(N, C)`` bias-free logits (default; C = 1008 for the FID Inception) or,
    with ``probs=True``, class probabilities whose rows sum to 1. Computed in float64.
    ``shuffle_seed``: permute the rows first with ``np.random.RandomState(seed)`` (2020 matches
    torch-fidelity); None keeps the given order (the original code).
    """
    if isinstance(predictions, torch.Tensor):
        x = predictions.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(predictions, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"predictions must be (N, C) with C >= 2 classes, got shape {x.shape}")
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits must be a positive int, got {splits!r}")
    n = x.shape[0]
    if n < splits:
        raise ValueError(f"{n} samples cannot fill {splits} splits")
    if not np.isfinite(x).all():
        raise ValueError("predictions contain NaN or inf values")
    if probs:
        sums = x.sum(axis=1)
        if (x < 0).any() or np.abs(sums - 1).max() > 1e-3:
            raise ValueError("probs=True needs non-negative rows summing to 1 (got row sums in "
                             f"[{sums.min():.4g}, {sums.max():.4g}]); pass logits with probs=False")
        p = x
        with np.errstate(divide="ignore"):
            log_p = np.log(p)
    else:
        log_p = x - x.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log-softmax
        p = np.exp(log_p)
    if shuffle_seed is not None:
        order = np.random.RandomState(shuffle_seed).permutation(n)
        p, log_p = p[order], log_p[order]
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        p_i, log_p_i = p[part], log_p[part]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(p_i.mean(axis=0, keepdims=True))
            # 0 * log 0 = 0: classes a sample gives no mass add nothing to its KL
            kl = np.where(p_i > 0, p_i * (log_p_i - log_marginal), 0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
