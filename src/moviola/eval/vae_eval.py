"""``moviola eval-vae``: how well an autoencoder reconstructs a set of clips (PSNR, SSIM, flicker).

Clips come from a folder of videos (``VideoFolder``: ``frames`` frames every ``stride``, resized
to cover ``size`` and centre-cropped; unreadable or too-short files skipped and counted) or from
the Moving Shapes test split. Each clip is encoded to the (normalized) latent and decoded back,
as a diffusion model sees it: ``decode(encode(x))``; metrics are in ``eval/vae_metrics.py``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import torch

from moviola.eval.vae_metrics import reconstruction_metrics, summarize


def evaluate_autoencoder(path: Union[str, Path], videos: Optional[Union[str, Path]] = None,
                         shapes: Optional[int] = None, frames: int = 17, size: int = 64, stride: int = 1,
                         batch_size: int = 4, chunk_frames: Optional[int] = None, tile_size: Optional[int] = None,
                         device: str = "cpu") -> dict:
    from moviola.autoencoders.loading import load_autoencoder
    from moviola.utils import resolve_device

    if (videos is None) == (shapes is None):
        raise ValueError("give exactly one of --videos DIR or --shapes N")
    for name, value in (("frames", frames), ("size", size), ("stride", stride), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    dev = resolve_device(device)
    ae = load_autoencoder(path).to(dev).eval()
    ae.latent_shape(frames, size, size)  # the frame-count rule and the size rule, before any decoding
    skipped: dict = {}
    if shapes is not None:
        from moviola.data.shapes import MovingShapes, max_frames_without_bounce

        # bouncing only when the clip is too long for the object to cross the frame once (the training data's rule)
        data = MovingShapes(split="test", count=shapes, size=size, frames=frames,
                            bounce=frames > max_frames_without_bounce(size), cache=False)
        source = f"Moving Shapes test split, {shapes} clips"
    else:
        from moviola.data.folders import VideoFolder

        data = VideoFolder(videos, frames=frames, stride=stride, size=size)
        skipped = dict(data.skipped)
        source = str(videos)
    kwargs = {}
    if chunk_frames is not None or tile_size is not None:
        if not hasattr(ae, "encode_dist"):
            raise ValueError("--chunk-frames / --tile-size apply to the causal VAE only")
        kwargs = {"chunk_frames": chunk_frames, "tile_size": tile_size}
    rows: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    n = 0
    batch: list[torch.Tensor] = []
    names: list[str] = []

    def flush() -> None:
        x = torch.stack(batch).to(dev)
        with torch.no_grad():
            z = ae.encode(x, **kwargs)
            recon = ae.decode(z, **({"tile_size": tile_size} if kwargs else {}))
        for k, v in reconstruction_metrics(recon.float().cpu(), x.float().cpu()).items():
            rows.setdefault(k, []).extend(v)
        batch.clear()

    read = getattr(data, "exact", data.__getitem__)  # a folder: each file once, bad ones skipped and counted
    for i in range(len(data)):
        item = read(i)
        if item is None:
            continue
        batch.append(item["video"])
        names.append(data.files[i].name if hasattr(data, "files") else f"test-{i:05d}")
        n += 1
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if shapes is None:
        skipped = dict(data.skipped)  # at init (probing headers) and while reading
    if n == 0:
        raise ValueError(f"no clip to evaluate in {source} (skipped: {skipped})")
    per_clip = [{"clip": name, **{k: v[i] for k, v in rows.items()}} for i, name in enumerate(names)]
    return {"autoencoder": str(path), "source": source, "clips": n, "frames": frames, "size": size,
            "skipped": skipped, **summarize(rows), "seconds": time.perf_counter() - t0, "per_clip": per_clip}
