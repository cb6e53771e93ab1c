"""Moving Shapes evaluation of a class- or text-conditional checkpoint or of a folder of videos.

``evaluate_checkpoint`` samples ``per_class`` videos of every class (seed ``seed + i`` for
video i; from labels or from captions) and scores them, optionally as image-to-video; ``evaluate_folder`` scores files listed in a ``manifest.jsonl``
(from ``moviola sample --out-dir``), ``captions.jsonl`` (from ``moviola data shapes``) or a CSV/JSONL caption
manifest whose captions are Moving Shapes captions.
Both report the seen combinations and the compositional hold-out separately.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Optional, Union

from moviola.data.shapes import HOLDOUT, NUM_CLASSES, MovingShapes, caption, label_to_attributes, parse_caption
from moviola.eval.shapes_score import score_batch


def _split_of(target: dict) -> str:
    return "holdout" if (target["colour"], target["shape"], target["direction"]) in HOLDOUT else "seen"


def summarize(videos, targets: list, palette: Optional[dict] = None) -> dict:
    """Scores per split (seen, holdout) and over all videos; per-video rows under ``rows``. ``palette``:
    recoloured colour words (eval/shapes_score.py)."""
    overall = score_batch(videos, targets, palette)
    out: dict = {"all": {k: v for k, v in overall.items() if k != "rows"}}
    for split in ("seen", "holdout"):
        idx = [i for i, r in enumerate(overall["rows"]) if _split_of(r["target"]) == split]
        if idx:
            part = score_batch([videos[i] for i in idx], [targets[i] for i in idx], palette)
            out[split] = {k: v for k, v in part.items() if k != "rows"}
    for r in overall["rows"]:
        r["split"] = _split_of(r["target"])
    out["rows"] = overall["rows"]
    return out


def evaluate_checkpoint(path: Union[str, Path], per_class: int = 1, steps: int = 50, cfg: Optional[float] = None,
                        sampler: str = "ddim", seed: int = 0, device=None, batch_size: int = 16,
                        image_to_video: bool = False, progress: bool = False,
                        palette: Optional[dict] = None, num_frames: Optional[int] = None,
                        fps: Optional[float] = None) -> dict:
    """Sample ``per_class`` videos of every class combination and score them (seed ``seed + i`` for video i).

    A class-conditional model gets the class labels, a text model the captions (``a red circle
    moving right``). ``image_to_video``: each video is also given the first frame of a test-split
    clip of its class (clip ``label + 48·j`` for its j-th video), and the result adds
    ``image_to_video``: how often colour and shape are kept, and the PSNR of the output's frame 0
    against the given frame (on [0, 1]; identical frames count as 100 dB). ``progress``: a bar over the
    videos on stderr. ``palette`` (``{word: (R, G, B)}``): score colours against it (eval/shapes_score.py);
    default: the checkpoint's ``data.palette`` (none for the spec's colours). The given first frames are drawn
    in it too. ``num_frames``: sample this many frames instead of the training length (length generalization:
    the scorer reads the whole video; its expected travel grows with the length). ``fps``: the frame-rate
    condition of a model trained with ``conditions.fps`` (``travel_per_frame_mean`` in the scores shows the speed
    it asks for).
    """
    from moviola.pipelines.generate import load_pipeline

    pipe = load_pipeline(path, device=device)
    if palette is None and getattr(pipe.config.data, "palette", None) is not None:
        palette = pipe.config.data.palette.colours()
    labels = [y for y in range(NUM_CLASSES) for _ in range(per_class)]
    kwargs = conditioning(pipe, labels, path)
    given = None
    if image_to_video:
        if "context" not in pipe.accepts and "image_tokens" not in pipe.accepts:
            raise ValueError(f"{path} was trained without context frames or image tokens: it cannot take a first frame")
        d = pipe.config.data
        test = MovingShapes(split="test", count=NUM_CLASSES * per_class, size=d.size, frames=d.frames,
                            seed=d.seed, bounce=d.bounce, cache=False, palette=palette)
        given = [test[y + NUM_CLASSES * j]["video"][:, 0] for y in range(NUM_CLASSES) for j in range(per_class)]
        kwargs["image"] = given
    settings = dict(steps=steps, cfg=cfg, sampler=sampler, **({"num_frames": num_frames} if num_frames else {}),
                    **({"fps": fps} if fps is not None else {}))
    video = _sample(pipe, kwargs, len(labels), settings,
                    seed, batch_size, progress)
    result = summarize(list(video), labels, palette)
    if given is not None:
        result["image_to_video"] = _image_to_video_scores(video, given, result["rows"])
    result["settings"] = {"checkpoint": str(path), "conditioning": "text" if "prompt" in kwargs else "labels",
                          "image_to_video": image_to_video, "per_class": per_class, "steps": steps,
                          "cfg": pipe.config.sample.cfg if cfg is None else cfg, "sampler": sampler, "seed": seed,
                          "frames": int(video.shape[2]), **({"fps": fps} if fps is not None else {}),
                          **({"palette": {k: list(v) for k, v in palette.items()}} if palette else {})}
    return result


def conditioning(pipe, labels: list[int], path) -> dict:
    """The pipeline arguments for Moving Shapes class ``labels``: their captions for a text model, the labels
    for a 48-class model; any other model is a ValueError naming ``path``."""
    if "text" in pipe.accepts:
        return {"prompt": [caption(*label_to_attributes(y)) for y in labels]}
    if getattr(pipe.model, "num_classes", 0) == NUM_CLASSES:
        return {"labels": labels}
    raise ValueError(f"{path} is neither a {NUM_CLASSES}-class Moving Shapes model nor a text model "
                     f"(it has {getattr(pipe.model, 'num_classes', 0)} classes and takes no text)")


def _sample(pipe, per_video: dict, n: int, settings: dict, seed: int, batch_size: int, progress: bool,
            desc: str = "eval shapes"):
    """The n videos of one pipeline call, made one batch per call under a bar over the videos: video i keeps
    the seed ``seed + i`` and its batch, so the videos are the same as one call's."""
    import torch
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    videos = []
    with tqdm(total=n, desc=desc, unit="video", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            part = {k: v[start:start + batch_size] for k, v in per_video.items()}
            videos.append(pipe(**part, **settings, seed=seed + start, batch_size=batch_size))
            bar.update(len(videos[-1]))
    return torch.cat(videos)


def psnr(a, b) -> float:
    """PSNR in dB of two images in [-1, 1], measured on [0, 1]; identical images give 100."""
    mse = float((((a.float() - b.float()) / 2) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-10))


def _image_to_video_scores(video, given: list, rows: list[dict]) -> dict:
    values = [psnr(v[:, 0], g) for v, g in zip(video, given)]
    kept = [bool(r["colour_ok"] and r["shape_ok"]) for r in rows]
    return {"n": len(values), "colour_and_shape_kept": sum(kept) / len(kept),
            "first_frame_psnr_mean": sum(values) / len(values), "first_frame_psnr_min": min(values)}


def evaluate_folder(folder: Union[str, Path], progress: bool = False) -> dict:
    """Score the videos a folder's manifest.jsonl (or captions.jsonl) lists; ``progress``: a bar over them."""
    videos, targets = read_folder(folder, progress)
    return summarize(videos, targets)


LISTINGS = ("manifest.jsonl", "captions.jsonl", "captions.csv", "manifest.csv")


def _target(row: dict):
    """A listing row's Moving Shapes target: its label, its colour/shape/direction, or those of its caption
    (``caption`` or ``text``: "a red circle moving right"); None if it has none of them."""
    if "label" in row:
        return row["label"]
    if all(k in row for k in ("colour", "shape", "direction")):
        return {k: row[k] for k in ("colour", "shape", "direction")}
    text = row.get("caption")
    words = parse_caption(text) if isinstance(text, str) else None
    if words is not None:
        return dict(zip(("colour", "shape", "direction"), words))
    return None


def read_folder(folder: Union[str, Path], progress: bool = False, desc: str = "eval shapes") -> tuple[list, list]:
    """The videos (uint8 ``(T,H,W,3)``) a folder's listing names and their targets (labels or
    ``dict(colour, shape, direction)``); ``progress``: a bar over them, named ``desc``.

    The listing is the folder's manifest.jsonl (moviola sample --out-dir), captions.jsonl (moviola data shapes),
    captions.csv or manifest.csv, or ``folder`` itself when it is a .jsonl or .csv manifest. Rows name their
    file in ``file`` or ``path`` (CSV: also WebVid's ``page_dir`` + ``videoid``; relative to the listing's folder)
    and their target as ``label``, ``colour``/``shape``/``direction``, or a Moving Shapes caption in
    ``caption``/``text`` (CSV: also ``name``) that :func:`moviola.data.shapes.parse_caption` reads."""
    from tqdm import tqdm

    from moviola.data.manifests import read_manifest, resolve
    from moviola.video import read_video

    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"{folder} is a file: give the folder that holds the videos and their manifest.jsonl "
                             "(moviola sample --out-dir) or captions.jsonl (moviola data shapes), or a .jsonl or "
                             ".csv manifest")
        listing = folder
    else:
        listing = next((folder / n for n in LISTINGS if (folder / n).is_file()), None)
    if listing is None:
        raise FileNotFoundError(f"{folder} has no {', '.join(LISTINGS)} listing the videos and their labels")
    videos, targets = [], []
    lines = read_manifest(listing)
    for number, row in tqdm(lines, desc=desc, unit="video", disable=not progress, file=sys.stderr,
                            dynamic_ncols=True):
        if row is None:
            raise ValueError(f"{listing} line {number}: not a JSON object")
        if row.get("file") is None:
            raise ValueError(f"{listing} line {number}: a row without \"file\" (or \"path\")")
        target = _target(row)
        if target is None:
            raise ValueError(f"{listing} line {number}: a row without label, colour/shape/direction or a Moving "
                             f"Shapes caption (\"a red circle moving right\"): {str(row)[:80]}")
        videos.append(read_video(resolve(listing, row["file"])))
        targets.append(target)
    if not videos:
        raise ValueError(f"{listing} lists no videos")
    return videos, targets


def write_rows_csv(rows: list[dict], path: Union[str, Path]) -> None:
    keys = ["split", "target", "colour", "shape", "direction", "match", "fill", "area_cv",
            "connected_fraction", "multiple_objects"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "target": " ".join(r["target"].values()) if isinstance(r["target"], dict) else r["target"]})


__all__ = ["evaluate_checkpoint", "evaluate_folder", "read_folder", "summarize", "write_rows_csv",
           "label_to_attributes"]
