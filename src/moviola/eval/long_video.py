"""Score long Moving Shapes videos (hundreds of frames): per window and across windows.

A long video (autoregressive extension, FIFO-Diffusion, a cascade) can be right in every 16-frame stretch and
still fail as a whole: the colour drifts, the object blinks out, a chunk boundary shows as a *seam* (the
object jumps), or a bouncing object turns round in mid-canvas. ``score_long_video`` measures those by the
pixel rules of /work/shared/moving_shapes.md (eval/shapes_score.py), ``score_long_batch`` aggregates them to the
figures the long-video goals are stated in.

Definitions (``v = S/32`` is the expected travel per frame, ``S = min(H, W)``):

- **Windows**: consecutive, non-overlapping runs of ``window`` frames from frame 0; when ``window`` does not
  divide T the last window is the final ``window`` frames (it overlaps the one before), so every frame is in a
  window and every window is full length. A video shorter than ``window`` is one window. Each window is scored
  by :func:`~moviola.eval.shapes_score.score_video`: its colour, shape, fitted direction and one-object fraction.
- **colour_shape_held**: every window's colour and shape are the prompt's.
- **one_object_fraction**: the fraction of all T frames whose foreground is exactly one 8-connected component
  (the scorer's ``connected_fraction`` over the whole video).
- **Track**: in every frame, the object is the largest 8-connected foreground component, tracked when it covers
  at least ``r²/2`` pixels (a quarter of the triangle's area, the smallest shape; a speck is not an object).
  Its centroid and bounding box are what the figures below read.
- **max_jump_ratio**: the largest centroid step between consecutive tracked frames, over ``v`` times the
  number of frames between them (an object missing for k frames may have moved k steps). Real clips: about 1.
  ``seams``: steps above ``SEAM_RATIO`` (3) times that; ``jumps`` lists them (frame, ratio).
- **Reversals**: along the prompt's axis (x for left/right, y for up/down), the centroid coordinate with
  hysteresis ``h = 2v`` (two frames of travel): a reversal is registered when the centroid has come back more than ``h`` from the farthest point of
  its current run. The reversal is *at a wall* when, in the frame of that farthest point, the object's bounding
  box is within ``tol = 2v + 1`` pixels of the canvas edge it was moving towards (equivalently the centre
  within ``tol`` of ``r`` or ``S - r`` for the symmetric shapes; the box, not the centroid, so the triangle's
  low centroid does not matter); ``2v`` covers the frame spacing (a bounce may fall between frames) and the
  extra pixel the anti-aliased edge lost to the foreground threshold.
- **reflects**: no reversal away from a wall, no *stall* (the object's farthest point is at a wall and it has
  not come back ``h`` from it ``WALL_DWELL`` (8) frames later while the video goes on: stuck at the wall,
  or gone through it), the off-axis centroid coordinate stays within ``tol`` (max − min), and at least two
  frames are tracked. An object that never reaches a wall needs no reversal. The rule holds for clips without
  bounce too (they never reverse), so it is computed for every video; bounce clips are the ones it tests.
- **Direction** of a long bounce video is not one linear fit (the fit of a bouncing object is about zero).
  ``initial_direction`` is the direction of the first run of motion: the first frame at which the centroid has
  moved more than ``h`` from the extreme reached before it, on either axis, gives the axis and sign
  (``static`` if that never happens). ``direction_ok``: it is the prompt's direction, or the opposite one where
  that first run starts, within the first ``h / v`` = 2 frames, at most ``v + 1`` pixels from the wall the prompt
  points to: a clip of ``data.shapes`` that starts within about ``2v`` of a wall moving towards it bounces
  before it has moved ``h`` (13 of 96 test clips), so its first visible run goes the other way. The price: an
  object that starts at a wall and moves away from it is taken for either direction along that axis.
  Each window also keeps the scorer's fitted ``direction`` (right in windows without a bounce), and
  ``moving``: its centroid's range along the prompt's axis is at least ``STATIC_FRACTION`` (a quarter) of the
  window's expected travel and at least its range on the other axis (a window with one bounce still covers
  half its travel); ``axis_held`` is every window moving.
"""
from __future__ import annotations

import csv
import inspect
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from moviola.eval.shapes_score import (
    STATIC_FRACTION, _as_frames, _target, _videos, foreground, label_components, score_video,
)

SEAM_RATIO = 3.0  # a centroid step above this many expected per-frame travels is a seam
REVERSAL_FRAMES = 2.0  # hysteresis h of a reversal, in frames of travel (h = 2v)
WALL_FRAMES = 2.0  # a reversal is at a wall within tol = WALL_FRAMES * v + WALL_PIXELS of the edge
WALL_PIXELS = 1.0
WALL_DWELL = 8  # frames the object may stay at a wall before it must have come back h from it
LONG_MODES = ("autoregressive", "fifo")  # the pipeline's long= modes `moviola eval long --long` offers
ONE_OBJECT_GOAL = 0.95  # the goal's "one object visible in >= 95 % of frames"
DIRECTION_AXIS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (axis: 0 x / 1 y, sign)
_NAMES = {(0, -1): "left", (0, 1): "right", (1, -1): "up", (1, 1): "down"}

__all__ = ["LONG_MODES", "SEAM_RATIO", "WALL_DWELL", "aggregate", "evaluate_long_checkpoint", "evaluate_long_folder",
           "score_long_batch", "score_long_video", "summarize_long", "windows", "write_long_rows_csv"]


def windows(frames: int, window: int = 16) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: non-overlapping ``window``-frame runs from 0, the last one ending at ``frames``."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"window must be an int of at least 2 frames, got {window!r}")
    if frames <= window:
        return [(0, int(frames))]
    spans = [(s, s + window) for s in range(0, frames - window + 1, window)]
    if spans[-1][1] < frames:
        spans.append((frames - window, frames))
    return spans


def _track(fg: np.ndarray, min_area: float) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """Per frame: the component count; and for tracked frames (largest component >= min_area pixels) their
    indices, centroids ``(n, 2)`` as (x, y) and boxes ``(n, 4)`` as (x0, x1, y0, y1), inclusive pixel indices."""
    counts = np.zeros(len(fg), dtype=np.int64)
    tracked, centres, boxes = [], [], []
    for t, mask in enumerate(fg):
        labels, n = label_components(mask)
        counts[t] = n
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] < min_area:
            continue
        ys, xs = np.nonzero(labels == k)
        tracked.append(t)
        centres.append((xs.mean(), ys.mean()))
        boxes.append((xs.min(), xs.max(), ys.min(), ys.max()))
    return (counts, tracked, np.array(centres, dtype=np.float64).reshape(-1, 2),
            np.array(boxes, dtype=np.float64).reshape(-1, 4))


def _runs(a: np.ndarray, h: float) -> tuple[list[tuple[int, int, int]], Optional[tuple[int, int, int]],
                                            Optional[tuple[int, int]]]:
    """Runs of monotone motion of a coordinate with hysteresis ``h``.

    Returns ``(reversals, first, last)``: each reversal ``(i_extreme, i_registered, sign)`` (the index of the
    run's farthest point, the index at which the way back passed ``h``, the run's sign); the first run
    ``(i_start, i_registered, sign)`` (the extreme it started from, the index at which it passed ``h``); and the
    run still going at the end, ``(i_extreme, sign)``. ``first`` and ``last`` are None when the coordinate never
    moves more than ``h``.
    """
    reversals: list[tuple[int, int, int]] = []
    first = None
    lo = hi = 0
    sign, ext = 0, 0
    for i in range(1, len(a)):
        if sign == 0:
            if a[i] < a[lo]:
                lo = i
            if a[i] > a[hi]:
                hi = i
            if a[i] - a[lo] > h:
                sign, ext, first = 1, i, (lo, i, 1)
            elif a[hi] - a[i] > h:
                sign, ext, first = -1, i, (hi, i, -1)
            continue
        if (a[i] - a[ext]) * sign > 0:
            ext = i
        elif (a[ext] - a[i]) * sign > h:
            reversals.append((ext, i, sign))
            sign, ext = -sign, i
    return reversals, first, ((ext, sign) if sign else None)


def _wall_gap(box: np.ndarray, axis: int, sign: int, extent: tuple[int, int]) -> float:
    """Pixels between the object's bounding box and the canvas edge it moves towards (``sign`` along ``axis``);
    ``extent``: the canvas's (width, height)."""
    lo, hi = box[2 * axis], box[2 * axis + 1]
    return float(extent[axis] - 1 - hi) if sign > 0 else float(lo)


def _reflection(tracked: list[int], centres: np.ndarray, boxes: np.ndarray, axis: int, extent: tuple[int, int],
                frames: int, h: float, tol: float) -> dict:
    """The reflect check along ``axis`` (module docstring): reversals, at which wall, stalls, off-axis drift."""
    a = centres[:, axis]
    reversals, _, last = _runs(a, h)
    rows, stalls = [], []
    for ext, _, sign in reversals:
        gap = _wall_gap(boxes[ext], axis, sign, extent)
        rows.append({"frame": int(tracked[ext]), "position": float(a[ext]), "wall_gap": gap, "at_wall": gap <= tol})
    # stalls: a run whose farthest point is at a wall and that has not turned WALL_DWELL frames later (while the
    # video goes on): stuck at the wall, or gone through it
    ends = [(ext, tracked[reg], sign) for ext, reg, sign in reversals]
    if last is not None:
        ends.append((last[0], None, last[1]))
    for ext, turned, sign in ends:
        deadline = tracked[ext] + WALL_DWELL
        if _wall_gap(boxes[ext], axis, sign, extent) <= tol and (turned if turned is not None else frames - 1) > deadline:
            stalls.append(int(tracked[ext]))
    off = centres[:, 1 - axis]
    drift = float(np.ptp(off)) if len(off) else None
    mid = sum(not r["at_wall"] for r in rows)
    ok = len(tracked) >= 2 and mid == 0 and not stalls and drift <= tol
    return {"reflects": bool(ok), "reversals": rows, "wall_reversals": len(rows) - mid, "mid_canvas_reversals": mid,
            "wall_stalls": stalls, "off_axis_drift": drift}


def _initial_direction(tracked: list[int], centres: np.ndarray, boxes: np.ndarray, extent: tuple[int, int],
                       h: float) -> tuple[str, Optional[dict]]:
    """The first run of motion on either axis: ``(name, {axis, sign, start_wall_gap})``, or ``("static", None)``."""
    best = None
    for axis in (0, 1):
        _, first, _ = _runs(centres[:, axis], h)
        if first is not None and (best is None or first[1] < best[1][1]):
            best = (axis, first)
    if best is None:
        return "static", None
    axis, (start, _, sign) = best
    # the run starts at the wall behind it (the one it moves away from) in one of the first frames: it may have
    # bounced off that wall before frame 1 (module docstring)
    behind = _wall_gap(boxes[start], axis, -sign, extent)
    bounced = tracked[start] <= REVERSAL_FRAMES and behind <= min(extent) / 32 + WALL_PIXELS
    return _NAMES[(axis, sign)], {"axis": axis, "sign": sign, "start_frame": int(tracked[start]),
                                  "start_wall_gap": behind, "bounced_at_start": bool(bounced)}


def score_long_video(video: Union[np.ndarray, torch.Tensor], target: Union[dict, int], window: int = 16,
                     palette: Optional[dict] = None) -> dict:
    """Score one long video against its prompt (module docstring: the definitions).

    ``video``: uint8 ``(T,H,W,3)`` or float ``(C,T,H,W)`` in [-1, 1]; ``target``: ``dict(colour, shape,
    direction)`` or a class label (the direction is the first one, as a bounce clip's caption names it);
    ``palette``: recoloured words (eval/shapes_score.py). Returns a JSON-friendly dict: ``windows`` (per window
    ``start, end, colour, shape, direction, colour_ok, shape_ok, one_object, moving``), ``colour_shape_held``,
    ``one_object_fraction``, ``initial_direction``, ``direction_ok``, ``axis_held``, ``max_jump_ratio``,
    ``seams``, ``jumps``, ``reflects`` and its details, ``frames``, ``tracked_frames``, ``target``.
    """
    goal = _target(target)
    frames = _as_frames(video)
    n_frames, height, width, _ = frames.shape
    if n_frames == 0:
        raise ValueError("cannot score a video with zero frames")
    size = min(height, width)
    v = size / 32
    h, tol = REVERSAL_FRAMES * v, WALL_FRAMES * v + WALL_PIXELS
    r = 3 * size / 16
    fg = foreground(frames)
    counts, tracked, centres, boxes = _track(fg, min_area=r * r / 2)
    axis, _ = DIRECTION_AXIS[goal["direction"]]

    per_window = []
    for start, end in windows(n_frames, window):
        row = score_video(frames[start:end], palette)
        inside = [i for i, t in enumerate(tracked) if start <= t < end]
        spread = np.ptp(centres[inside], axis=0) if inside else np.zeros(2)
        expected = (end - start - 1) * v
        moving = bool(inside) and spread[axis] >= STATIC_FRACTION * expected and spread[axis] >= spread[1 - axis]
        per_window.append({
            "start": start, "end": end, "colour": row["colour"], "shape": row["shape"], "direction": row["direction"],
            "colour_ok": row["colour"] == goal["colour"], "shape_ok": row["shape"] == goal["shape"],
            "one_object": row["connected_fraction"], "n_objects": row["n_objects"], "moving": bool(moving),
        })

    jumps, ratios = [], []
    for i in range(1, len(tracked)):
        gap = tracked[i] - tracked[i - 1]
        ratio = float(np.hypot(*(centres[i] - centres[i - 1]))) / (gap * v)
        ratios.append(ratio)
        if ratio > SEAM_RATIO:
            jumps.append({"frame": int(tracked[i]), "ratio": ratio})
    initial, first = _initial_direction(tracked, centres, boxes, (width, height), h)
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[goal["direction"]]
    direction_ok = initial == goal["direction"] or (initial == opposite and first["bounced_at_start"])
    reflection = _reflection(tracked, centres, boxes, axis, (width, height), n_frames, h, tol)
    return {
        "target": goal,
        "frames": int(n_frames),
        "window": int(window),
        "windows": per_window,
        "colour_shape_held": all(w["colour_ok"] and w["shape_ok"] for w in per_window),
        "one_object_fraction": float(np.mean(counts == 1)),
        "tracked_frames": len(tracked),
        "initial_direction": initial,
        "direction_ok": bool(direction_ok),
        "axis_held": all(w["moving"] for w in per_window),
        "max_jump_ratio": max(ratios) if ratios else None,
        "seams": len(jumps),
        "jumps": jumps,
        **reflection,
    }


def _mean(values: list) -> Optional[float]:
    values = [x for x in values if x is not None]
    return float(np.mean(values)) if values else None


def score_long_batch(videos: Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]],
                     targets: Union[Sequence[Union[dict, int]], torch.Tensor, np.ndarray], window: int = 16,
                     palette: Optional[dict] = None) -> dict:
    """Score long videos against their prompts: the aggregates of :func:`aggregate` and the per-video ``rows``."""
    items = _videos(videos)
    goals = list(targets.tolist() if isinstance(targets, (torch.Tensor, np.ndarray)) else targets)
    if len(items) != len(goals):
        raise ValueError(f"got {len(items)} videos but {len(goals)} targets")
    if not items:
        raise ValueError("nothing to score: the batch is empty")
    rows = [score_long_video(video, goal, window, palette) for video, goal in zip(items, goals)]
    return {**aggregate(rows), "rows": rows}


def aggregate(rows: list[dict]) -> dict:
    """The figures the long-video goals are stated in, over rows of :func:`score_long_video`.

    ``held_rate``: videos whose colour and shape are the prompt's in every window; ``one_object_mean`` and
    ``one_object_rate`` (videos with ``one_object_fraction`` >= 0.95); ``goal_rate``: both at once (the goal
    "colour and shape hold in every window and one object is visible in >= 95 % of frames");
    ``max_jump_ratio_max`` / ``_mean`` and ``no_seam_rate``; ``reflect_rate``; ``direction_acc`` (initial
    direction), ``axis_held_rate``; ``window_colour_acc`` / ``window_shape_acc`` over all windows. A video with
    fewer than two tracked frames has no jump ratio and counts as having a seam.
    """
    if not rows:
        raise ValueError("nothing to aggregate: no rows")
    every_window = [w for r in rows for w in r["windows"]]
    jumps = [r["max_jump_ratio"] for r in rows]
    return {
        "n": len(rows),
        "frames": sorted({r["frames"] for r in rows}) if len({r["frames"] for r in rows}) > 1 else rows[0]["frames"],
        "window": rows[0]["window"],
        "held_rate": _mean([r["colour_shape_held"] for r in rows]),
        "one_object_mean": _mean([r["one_object_fraction"] for r in rows]),
        "one_object_rate": _mean([r["one_object_fraction"] >= ONE_OBJECT_GOAL for r in rows]),
        "goal_rate": _mean([r["colour_shape_held"] and r["one_object_fraction"] >= ONE_OBJECT_GOAL for r in rows]),
        "max_jump_ratio_max": max((j for j in jumps if j is not None), default=None),
        "max_jump_ratio_mean": _mean(jumps),
        "no_seam_rate": _mean([r["seams"] == 0 and r["max_jump_ratio"] is not None for r in rows]),
        "reflect_rate": _mean([r["reflects"] for r in rows]),
        "direction_acc": _mean([r["direction_ok"] for r in rows]),
        "axis_held_rate": _mean([r["axis_held"] for r in rows]),
        "window_colour_acc": _mean([w["colour_ok"] for w in every_window]),
        "window_shape_acc": _mean([w["shape_ok"] for w in every_window]),
    }


# ----------------------------------------------------------------------------- moviola eval long


def summarize_long(videos: list, targets: list, window: int = 16, palette: Optional[dict] = None,
                   progress: bool = False) -> dict:
    """Scores over all videos and per split (``seen``, ``holdout``: eval/shapes_eval.py); per-video ``rows``
    (each with its ``split``). ``progress``: a bar over the videos on stderr."""
    from tqdm import tqdm

    from moviola.eval.shapes_eval import _split_of

    if len(videos) != len(targets):
        raise ValueError(f"got {len(videos)} videos but {len(targets)} targets")
    if not videos:
        raise ValueError("nothing to score: no videos")
    rows = []
    for video, target in tqdm(list(zip(videos, targets)), desc="eval long (scoring)", unit="video",
                              disable=not progress, file=sys.stderr, dynamic_ncols=True):
        row = score_long_video(video, target, window, palette)
        row["split"] = _split_of(row["target"])
        rows.append(row)
    out: dict = {"all": aggregate(rows)}
    for split in ("seen", "holdout"):
        part = [r for r in rows if r["split"] == split]
        if part:
            out[split] = aggregate(part)
    out["rows"] = rows
    return out


def evaluate_long_folder(folder: Union[str, Path], window: int = 16, progress: bool = False) -> dict:
    """Score the long videos a folder's manifest.jsonl (``moviola sample --out-dir``) or captions.jsonl
    (``moviola data shapes --bounce --frames 257``) lists."""
    from moviola.eval.shapes_eval import read_folder

    videos, targets = read_folder(folder, progress, desc="eval long (reading)")
    result = summarize_long(videos, targets, window, progress=progress)
    result["settings"] = {"videos": str(folder), "window": window}
    return result


def evaluate_long_checkpoint(path: Union[str, Path], frames: int, long: Optional[str] = None, per_class: int = 1,
                             steps: Optional[int] = None, cfg: Optional[float] = None, sampler: str = "ddim",
                             seed: int = 0, device=None, batch_size: int = 4, window: int = 16,
                             progress: bool = False) -> dict:
    """Sample ``per_class`` videos of ``frames`` frames of every class and score them as long videos.

    ``long``: the pipeline's long-video mode (``autoregressive``, ``fifo``), passed as ``pipe(..., long=long)``;
    None samples all frames at once (ordinary sampling, no ``long=`` argument). Video i has the seed
    ``seed + i`` (eval/shapes_eval.py). Colours are read against the checkpoint's ``data.palette`` if it has one.
    A build whose pipeline takes no ``long=`` is a ValueError before anything is sampled.
    """
    from moviola.data.shapes import NUM_CLASSES
    from moviola.eval.shapes_eval import _sample, conditioning
    from moviola.pipelines.generate import load_pipeline

    if long is not None and long not in LONG_MODES:
        raise ValueError(f"long must be one of {list(LONG_MODES)} or None, got {long!r}")
    pipe = load_pipeline(path, device=device)
    if long is not None and "long" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(f"long sampling (--long {long}) is not available in this build: its pipeline takes no "
                         "long= argument")
    palette = None
    if getattr(pipe.config.data, "palette", None) is not None:
        palette = pipe.config.data.palette.colours()
    labels = [y for y in range(NUM_CLASSES) for _ in range(per_class)]
    kwargs = conditioning(pipe, labels, path)
    if steps is None and long != "fifo":  # FIFO picks its own default: a multiple of its queue's levels
        steps = 50
    settings = dict(steps=steps, cfg=cfg, sampler=sampler, num_frames=frames,
                    **({"long": long} if long is not None else {}))
    video = _sample(pipe, kwargs, len(labels), settings, seed, batch_size, progress, desc="eval long")
    result = summarize_long(list(video), labels, window, palette)
    result["settings"] = {"checkpoint": str(path), "conditioning": "text" if "prompt" in kwargs else "labels",
                          "long": long, "per_class": per_class, "steps": steps,
                          "cfg": pipe.config.sample.cfg if cfg is None else cfg, "sampler": sampler, "seed": seed,
                          "frames": int(video.shape[2]), "window": window,
                          **({"palette": {k: list(v) for k, v in palette.items()}} if palette else {})}
    return result


def write_long_rows_csv(rows: list[dict], path: Union[str, Path]) -> None:
    """One row per video: its target and the video-level figures."""
    keys = ["split", "target", "frames", "colour_shape_held", "one_object_fraction", "initial_direction",
            "direction_ok", "axis_held", "max_jump_ratio", "seams", "reflects", "wall_reversals",
            "mid_canvas_reversals", "off_axis_drift"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "target": " ".join(r["target"].values())})
