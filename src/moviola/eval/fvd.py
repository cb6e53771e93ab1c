"""FVD by the StyleGAN-V protocol (the one Latte reports), with a content-keyed cache of real statistics.

The protocol (``fvd2048_16f``), each choice a parameter:

- ``clips`` videos per set (2048); ``frames`` consecutive frames per clip (16), every
  ``stride``-th frame (1; StyleGAN-V's ``_subsample8f`` variants use 8);
- the **real** set is the first ``clips`` usable videos of the folder in sorted file order, each
  cut at a **random offset** (seeded: a pure function of ``seed`` and the video's position);
  videos shorter than ``frames × stride`` are skipped and counted (StyleGAN-V's
  ``discard_short_videos`` rule), as are files that do not decode;
- the **generated** set is the first ``clips`` usable videos, each cut at frame 0;
- frames are optionally centre-cropped and resized to ``resolution`` (Latte: 256) before the
  detector, which sees uint8 ``(B, 3, T, H, W)`` and does its own resize to 224;
- features are accumulated in float64 (``FeatureStats``) and compared with the Fréchet
  distance (``frechet_distance_from_stats``, biased covariance ``ddof=0`` as StyleGAN-V).

Too few usable videos for ``clips`` is an error that says how many were found; StyleGAN-V would
silently use fewer, which makes FVDs incomparable (the distance's bias grows as 1/N).

The real-set statistics are cached under ``<cache>/fvd/<key>.npz``; the key hashes the detector's
checksum, every protocol parameter and the **bytes** of every video file used, so an edited or
replaced dataset never reuses stale statistics (StyleGAN-V keys its cache on arguments only).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from moviola.eval.frechet import FeatureStats, frechet_distance_from_stats

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif")


class NotEnoughVideos(ValueError):
    """Fewer usable videos than the requested clip count."""


def list_videos(folder: Union[str, Path]) -> list[Path]:
    """The video files of a folder: its ``manifest.jsonl`` order if it has one (``moviola sample
    --out-dir``), else sorted names, recursively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        return [folder / r["file"] for r in rows]
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def _offset(seed: int, position: int, available: int) -> int:
    """Random start of a real clip: a pure function of (seed, position in the set)."""
    return int(np.random.default_rng([seed, position]).integers(0, available + 1))


def iter_clips(files: list[Path], clips: int, frames: int, stride: int = 1, random_offset: bool = False,
               seed: int = 0, resolution: Optional[int] = None, skipped: Optional[Counter] = None,
               used: Optional[list] = None) -> Iterator[np.ndarray]:
    """Clips uint8 ``(T, H, W, 3)`` from the first ``clips`` usable files; unusable ones are counted
    in ``skipped`` (reason -> count) and the files used are appended to ``used``."""
    from moviola.video import VideoDecodeError, read_video

    span = (frames - 1) * stride + 1  # source frames one clip covers
    needed = frames * stride  # StyleGAN-V discards videos shorter than frames × stride (not span)
    skipped = Counter() if skipped is None else skipped
    n = 0
    for path in files:
        if n == clips:
            return
        try:
            video = read_video(path)  # (T, H, W, 3) uint8
        except (VideoDecodeError, OSError):  # (FileNotFoundError is an OSError)
            skipped["unreadable"] += 1
            continue
        if video.shape[0] < needed:
            skipped[f"shorter than {needed} frames"] += 1
            continue
        start = _offset(seed, n, video.shape[0] - span) if random_offset else 0
        clip = video[start:start + span:stride]
        if resolution is not None:
            clip = _crop_resize(clip, resolution)
        if used is not None:
            used.append(path)
        n += 1
        yield clip
    if n < clips:
        why = ", ".join(f"{v} {k}" for k, v in skipped.items()) or "none skipped"
        raise NotEnoughVideos(f"found {n} usable videos ({why}) of {len(files)} files, but {clips} clips were "
                              f"requested: pass --clips {n} or fewer (FVDs with different clip counts are not "
                              "comparable), or add videos")


def _crop_resize(clip: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size`` (Latte's evaluation preprocessing), uint8 in and out."""
    from moviola.data.transforms import resize_and_crop

    x = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, T, H, W) in [-1, 1], its range
    x = resize_and_crop(x, size)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (T, S, S, 3)


def clip_stats(clips: Iterator[np.ndarray], detector: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 16,
               meta: Optional[dict] = None) -> FeatureStats:
    """Detector features of every clip, accumulated in float64."""
    stats = FeatureStats(meta=meta)
    batch: list[np.ndarray] = []

    def flush():
        x = torch.from_numpy(np.stack(batch)).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W) uint8
        stats.update(detector(x))
        batch.clear()

    for clip in clips:
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return stats


def _protocol(clips: int, frames: int, stride: int, resolution: Optional[int], seed: int) -> dict:
    return {"protocol": "stylegan-v", "clips": clips, "frames": frames, "stride": stride,
            "resolution": resolution, "seed": seed}


def _content_key(files: list[Path], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for p in files:
        h.update(b"\0file\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def real_stats(folder: Union[str, Path], detector, clips: int = 2048, frames: int = 16, stride: int = 1,
               resolution: Optional[int] = None, seed: int = 0, batch_size: int = 16,
               cache_dir: Optional[Union[str, Path]] = None, use_cache: bool = True) -> tuple[FeatureStats, dict]:
    """Statistics of the real set, from the cache when the same files, detector and protocol made them.

    Returns ``(stats, info)`` with ``info = {"cache": "hit"|"miss"|"off", "skipped": {...}, "key": ...}``.
    The cache key covers the candidate files in order: which files end up used depends only on them.
    """
    from moviola.conditioning.text import default_cache_dir

    files = list_videos(folder)
    meta = {**_protocol(clips, frames, stride, resolution, seed), **getattr(detector, "meta", {})}
    key = _content_key(files, meta) if use_cache else None
    path = Path(cache_dir or default_cache_dir()) / "fvd" / f"real-{key[:32]}.npz" if key else None
    if path is not None and path.is_file():
        try:
            stats = FeatureStats.load(path)
            return stats, {"cache": "hit", "key": key, "skipped": stats.meta.get("skipped", {}), "path": str(path)}
        except ValueError:
            pass  # a damaged cache file is recomputed
    skipped: Counter = Counter()
    stats = clip_stats(iter_clips(files, clips, frames, stride, random_offset=True, seed=seed, resolution=resolution,
                                  skipped=skipped), detector, batch_size, meta={**meta, "set": "real"})
    stats.meta["skipped"] = dict(skipped)
    info = {"cache": "off" if path is None else "miss", "key": key, "skipped": dict(skipped)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stats.save(path)
        info["path"] = str(path)
    return stats, info


def fake_stats(folder: Union[str, Path], detector, clips: int = 2048, frames: int = 16, stride: int = 1,
               resolution: Optional[int] = None, batch_size: int = 16) -> tuple[FeatureStats, dict]:
    files = list_videos(folder)
    skipped: Counter = Counter()
    meta = {**_protocol(clips, frames, stride, resolution, 0), **getattr(detector, "meta", {}), "set": "generated"}
    stats = clip_stats(iter_clips(files, clips, frames, stride, random_offset=False, resolution=resolution,
                                  skipped=skipped), detector, batch_size, meta=meta)
    return stats, {"skipped": dict(skipped)}


def fvd(real: Union[str, Path], fake: Union[str, Path], detector, clips: int = 2048, frames: int = 16,
        stride: int = 1, resolution: Optional[int] = None, seed: int = 0, batch_size: int = 16,
        cache_dir: Optional[Union[str, Path]] = None, use_cache: bool = True) -> dict:
    """FVD between a folder of real videos and a folder of generated ones (see the module docstring)."""
    for name, value in (("clips", clips), ("frames", frames), ("stride", stride), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if clips < 2:
        raise ValueError("FVD needs at least 2 clips per set (a covariance)")
    r, r_info = real_stats(real, detector, clips, frames, stride, resolution, seed, batch_size, cache_dir, use_cache)
    f, f_info = fake_stats(fake, detector, clips, frames, stride, resolution, batch_size)
    value = frechet_distance_from_stats(r, f, ddof=0)
    return {"fvd": value, "clips": clips, "frames": frames, "stride": stride, "resolution": resolution,
            "seed": seed, **getattr(detector, "meta", {}), "real_cache": r_info["cache"],
            "real_skipped": r_info["skipped"], "generated_skipped": f_info["skipped"]}
