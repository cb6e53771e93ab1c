"""``moviola eval-vae``: how well an autoencoder reconstructs a set of clips (PSNR, SSIM, flicker).

Clips come from a folder of videos (``VideoFolder``: ``frames`` frames every ``stride``, resized
to cover ``size`` and centre-cropped; unreadable or too-short files skipped and counted) or from
the Moving Shapes test split. Each clip is encoded to the (normalized) latent and decoded back,
as a diffusion model sees it: ``decode(encode(x))``; metrics are in ``eval/vae_metrics.py``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Union

import torch
from tqdm import tqdm

from moviola.data.folders import VIDEO_SUFFIXES, VideoFolder
from moviola.eval.vae_metrics import reconstruction_metrics, summarize


def evaluate_autoencoder(path: Union[str, Path], videos: Optional[Union[str, Path]] = None,
                         shapes: Optional[int] = None, frames: int = 17, size: int = 64, stride: int = 1,
                         batch_size: int = 4, chunk_frames: Optional[int] = None, tile_size: Optional[int] = None,
                         device: str = "cpu", progress: bool = False) -> dict:
    """PSNR, SSIM and flicker of ``decode(encode(x))`` over the clips of ``videos`` (a folder, or one video
    file) or of ``shapes`` Moving Shapes test clips; ``progress``: a bar over the clips on stderr."""
    from moviola.autoencoders.loading import load_autoencoder
    from moviola.utils import resolve_device

    if (videos is None) == (shapes is None):
        raise ValueError("give exactly one of --videos (a folder or one video file) or --shapes N")
    for name, value in (("frames", frames), ("size", size), ("stride", stride), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    dev = resolve_device(device)
    ae = load_autoencoder(path).to(dev).eval()
    ae.latent_shape(frames, size, size)  # the frame-count rule and the size rule, before any decoding
    data, source = _clips(videos, shapes, frames=frames, stride=stride, size=size)
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
    scored: list[tuple[torch.Tensor, int]] = []  # Moving Shapes: (reconstruction, label), scored at the end

    def flush() -> None:
        x = torch.stack(batch).to(dev)
        with torch.no_grad():
            z = ae.encode(x, **kwargs)
            recon = ae.decode(z, **({"tile_size": tile_size} if kwargs else {}))
        for k, v in reconstruction_metrics(recon.float().cpu(), x.float().cpu()).items():
            rows.setdefault(k, []).extend(v)
        if shapes is not None:
            scored.extend(zip(recon.float().cpu(), labels[len(scored):len(scored) + len(batch)]))
        batch.clear()

    labels: list[int] = []
    read = getattr(data, "exact", data.__getitem__)  # a folder: each file once, bad ones skipped and counted
    for i in tqdm(range(len(data)), desc="eval-vae", unit="clip", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True):
        item = read(i)
        if item is None:
            continue
        batch.append(item["video"])
        labels.append(int(item.get("label", -1)))
        names.append(data.files[i].name if hasattr(data, "files") else f"test-{i:05d}")
        n += 1
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    skipped = dict(getattr(data, "skipped", {}))  # a folder's: at init (probing headers) and while reading
    if n == 0:
        raise ValueError(f"no clip to evaluate in {source} (skipped: {skipped})")
    per_clip = [{"clip": name, **{k: v[i] for k, v in rows.items()}} for i, name in enumerate(names)]
    out = {"autoencoder": str(path), "source": source, "clips": n, "frames": frames, "size": size,
           "skipped": skipped, **summarize(rows), "seconds": time.perf_counter() - t0, "per_clip": per_clip}
    if scored:  # what a latent model on this autoencoder can at best score: its reconstructions, by the scorer
        from moviola.eval.shapes_score import score_batch

        s = score_batch(torch.stack([v for v, _ in scored]), [y for _, y in scored])
        out["shapes_score"] = {k: v for k, v in s.items() if isinstance(v, (int, float))}
    return out


class _OneVideo(VideoFolder):
    """A :class:`VideoFolder` of one file: the same clip rules, probing and skip counting."""

    def __init__(self, file: Path, **kwargs) -> None:
        self._file = file
        try:
            super().__init__(file.parent, captions=None, **kwargs)
        except ValueError:  # no usable file: say why, of this file
            why = {"too_short": f"it has fewer frames than a clip of {kwargs.get('frames')} frames every "
                                f"{kwargs.get('stride', 1)} needs", "empty": "it is empty",
                   "unreadable": "it cannot be decoded"}
            raise ValueError(f"--videos {file}: no clip to evaluate: "
                             + "; ".join(why.get(k, k) for k in self.skipped)) from None

    def _find(self, suffixes: tuple[str, ...]) -> list[Path]:
        return [self._file]


def _clips(videos: Optional[Union[str, Path]], shapes: Optional[int], frames: int, stride: int, size: int):
    """The clips to reconstruct and a name for them: Moving Shapes test clips, a folder of videos, or one file."""
    if shapes is not None:
        from moviola.data.shapes import MovingShapes, max_frames_without_bounce

        # bouncing only when the clip is too long for the object to cross the frame once (the training data's rule)
        return (MovingShapes(split="test", count=shapes, size=size, frames=frames,
                             bounce=frames > max_frames_without_bounce(size), cache=False),
                f"Moving Shapes test split, {shapes} clips")
    return _video_source(videos, frames=frames, stride=stride, size=size), str(videos)


def _video_source(videos: Union[str, Path], **kwargs) -> VideoFolder:
    """``--videos``: a folder of videos, or one video file."""
    path = Path(videos)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"--videos {path}: not a video file (expected {', '.join(VIDEO_SUFFIXES)}), "
                             "nor a folder of them")
        return _OneVideo(path, **kwargs)
    if not path.is_dir():
        raise FileNotFoundError(f"--videos {path}: no such folder or video file")
    return VideoFolder(path, **kwargs)
