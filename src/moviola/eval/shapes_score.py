"""Score videos against Moving Shapes prompts by the rules of /work/shared/moving_shapes.md.

A generated clip is read back as pixels and measured directly: no learned classifier, so the
scorer is exact on real clips (every test clip scores a match) and cannot be gamed by features.

Choices the spec leaves open:
- Connectivity is 8-neighbour: anti-aliased diagonal edges (the triangle's sides) touch only
  at corners after thresholding, and they are still one object.
- The canvas size used for the expected travel ``(T-1) * S/32`` is ``S = min(H, W)``.
- Direction needs at least two frames with foreground (a line through one point has no slope);
  otherwise it is None. The displacement is the fitted slope times ``T - 1``.
- Consistency is measured over all T frames: an empty frame is a frame whose foreground is not
  one component, and its zero area counts in the area CV (an object that blinks out is not
  consistent). ``area_cv`` is None when no frame has foreground.
- ``multiple_objects`` flags a video whose median component count over frames with foreground
  is above one.

A palette (``palette={"red": (230, 50, 230)}``, a run's ``data.palette``) scores videos of recoloured
Moving Shapes: the colour word is the nearest of the palette's colours, where the spec's value of each
recoloured word stays a candidate under the name ``spec:<word>`` (a red object asked to be drawn magenta
scores ``spec:red``, not ``red``: the colour was not adopted). Where two candidates share a value (a palette
that swaps words, ``{red: yellow's RGB, yellow: red's RGB}``), the word the palette gives it wins.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Sequence, Union

import numpy as np
import torch

from moviola.data.shapes import COLOURS, DIRECTIONS, SHAPES, label_to_attributes

FOREGROUND_THRESHOLD = 80  # a pixel is foreground when its largest channel is above this (of 255)
SQUARE_MIN_FILL = 0.88  # fill = area / bbox area; ideal square 1.0, circle pi/4, triangle 0.5
CIRCLE_MIN_FILL = 0.65
STATIC_FRACTION = 0.25  # displacement under this fraction of the expected travel is "static"

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
_EIGHT_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]

__all__ = ["count_components", "foreground", "label_components", "score_batch", "score_video"]


def _as_frames(video: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """uint8 ``(T,H,W,3)`` as is; float ``(C,T,H,W)`` in [-1, 1] through ``to_uint8``."""
    from moviola.video import to_uint8

    if video.dtype in (np.uint8, torch.uint8):
        frames = np.asarray(video.cpu() if isinstance(video, torch.Tensor) else video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 videos must be (T,H,W,3), got shape {frames.shape}")
        return frames
    if video.ndim != 4:
        raise ValueError(f"float videos must be (C,T,H,W) in [-1, 1], got shape {tuple(video.shape)}")
    return to_uint8(video)


def foreground(frames: np.ndarray) -> np.ndarray:
    """``(T,H,W)`` bool: the largest channel is above the threshold."""
    return frames.max(axis=-1) > FOREGROUND_THRESHOLD


def _label_components_bfs(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (1..n) by breadth-first search: the fallback when scipy is missing."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy, dx in _EIGHT_NEIGHBOURS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = n
                    queue.append((ny, nx))
    return labels, n


def _count_components_bfs(mask: np.ndarray) -> int:
    """8-connected components by breadth-first search: the fallback when scipy is missing."""
    return _label_components_bfs(mask)[1]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (1..n, 0 = background) of a 2-D bool mask and n (scipy if importable, else
    breadth-first search)."""
    try:
        from scipy import ndimage
    except ImportError:
        return _label_components_bfs(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, int(n)


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a 2-D bool mask (scipy if importable, else BFS)."""
    return label_components(mask)[1]


def _classify_shape(fill: float) -> str:
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if fill >= CIRCLE_MIN_FILL:
        return "circle"
    return "triangle"


def _direction(t: np.ndarray, cx: np.ndarray, cy: np.ndarray, frames: int, size: int) -> tuple[Optional[str], float, float]:
    """Least-squares slopes of the centroid; returns (direction, dx, dy) over ``frames - 1`` steps."""
    if len(t) < 2:
        return None, 0.0, 0.0
    steps = frames - 1
    dx = float(np.polyfit(t, cx, 1)[0]) * steps
    dy = float(np.polyfit(t, cy, 1)[0]) * steps
    expected = steps * size / 32
    if max(abs(dx), abs(dy)) < STATIC_FRACTION * expected:
        return "static", dx, dy
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), dx, dy
    return ("down" if dy > 0 else "up"), dx, dy  # image y grows downward


def _colours(palette: Optional[dict]) -> tuple[list[str], np.ndarray]:
    """The colour names the scorer chooses from and their RGB values (module docstring: palettes)."""
    if not palette:
        return list(COLOURS), _PALETTE
    unknown = [w for w in palette if w not in COLOURS]
    if unknown:
        raise ValueError(f"palette: unknown colour(s) {unknown}; expected some of {list(COLOURS)}")
    names = list(COLOURS) + [f"spec:{w}" for w in palette]
    values = [palette.get(w, rgb) for w, rgb in COLOURS.items()] + [COLOURS[w] for w in palette]
    return names, np.array(values, dtype=np.float64)


def score_video(video: Union[np.ndarray, torch.Tensor], palette: Optional[dict] = None) -> dict:
    """Measure one video: colour, shape, direction (None if never seen) and consistency figures.

    Accepts uint8 ``(T,H,W,3)`` or float ``(C,T,H,W)`` in [-1, 1]; ``palette``: recoloured words (module
    docstring). Returns a JSON-friendly dict:
    ``colour, shape, direction, fill, mean_rgb, displacement, area_cv, connected_fraction,
    n_objects, multiple_objects, fg_frames, frames``.
    """
    names, values = _colours(palette)
    frames = _as_frames(video)
    n_frames, h, w, _ = frames.shape
    if n_frames == 0:
        raise ValueError("cannot score a video with zero frames")
    fg = foreground(frames)
    areas = fg.sum(axis=(1, 2))
    present = np.nonzero(areas)[0]
    components = [count_components(fg[t]) for t in range(n_frames)]
    connected = float(np.mean([c == 1 for c in components]))
    result = {
        "colour": None,
        "shape": None,
        "direction": None,
        "fill": None,
        "mean_rgb": None,
        "displacement": None,
        "area_cv": None,
        "connected_fraction": connected,
        "n_objects": 0,
        "multiple_objects": False,
        "fg_frames": int(len(present)),
        "frames": int(n_frames),
    }
    if len(present) == 0:
        return result

    ys, xs = np.mgrid[0:h, 0:w]
    rgbs, fills, cx, cy = [], [], [], []
    for t in present:
        m = fg[t]
        rgbs.append(frames[t][m].mean(axis=0))
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        bbox = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        fills.append(areas[t] / bbox)
        cx.append(xs[m].mean())
        cy.append(ys[m].mean())
    rgb = np.median(np.stack(rgbs), axis=0)
    colour = names[int(np.argmin(((values - rgb) ** 2).sum(axis=1)))]
    fill = float(np.median(fills))
    direction, dx, dy = _direction(present.astype(np.float64), np.array(cx), np.array(cy), n_frames, min(h, w))
    n_objects = int(round(float(np.median([components[t] for t in present]))))
    result.update(
        colour=colour,
        shape=_classify_shape(fill),
        direction=direction,
        fill=fill,
        mean_rgb=[float(v) for v in rgb],
        displacement=[dx, dy],
        area_cv=float(areas.std() / areas.mean()),
        n_objects=n_objects,
        multiple_objects=n_objects > 1,
    )
    return result


def _target(target: Union[dict, int, torch.Tensor, np.integer]) -> dict:
    """A target as ``dict(colour, shape, direction)``, from a dict or a class label."""
    if isinstance(target, dict):
        missing = {"colour", "shape", "direction"} - set(target)
        if missing:
            raise ValueError(f"target {target!r} is missing {sorted(missing)}")
        checks = (("colour", list(COLOURS)), ("shape", list(SHAPES)), ("direction", list(DIRECTIONS)))
        for key, allowed in checks:
            if target[key] not in allowed:
                raise ValueError(f"target {key} {target[key]!r} is not one of {allowed}")
        return {k: target[k] for k in ("colour", "shape", "direction")}
    colour, shape, direction = label_to_attributes(int(target))
    return {"colour": colour, "shape": shape, "direction": direction}


def _videos(videos) -> list:
    if isinstance(videos, (list, tuple)):
        return list(videos)
    if videos.ndim != 5:
        raise ValueError(f"expected a batch (B,C,T,H,W) float or (B,T,H,W,3) uint8, got shape {tuple(videos.shape)}")
    return [videos[i] for i in range(videos.shape[0])]


def score_batch(
    videos: Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]],
    targets: Union[Sequence[Union[dict, int]], torch.Tensor, np.ndarray],
    palette: Optional[dict] = None,
) -> dict:
    """Score a batch against its prompts: attribute accuracies, match rate, consistency, n, rows.

    ``targets`` are dicts ``(colour, shape, direction)`` or class labels, one per video. A video
    with no foreground counts as wrong on every attribute. ``palette``: recoloured words (module docstring).
    """
    items = _videos(videos)
    goals = [_target(t) for t in (targets.tolist() if isinstance(targets, (torch.Tensor, np.ndarray)) else targets)]
    if len(items) != len(goals):
        raise ValueError(f"got {len(items)} videos but {len(goals)} targets")
    if not items:
        raise ValueError("nothing to score: the batch is empty")
    rows = []
    for video, goal in zip(items, goals):
        row = score_video(video, palette)
        ok = {k: row[k] == goal[k] for k in ("colour", "shape", "direction")}
        row.update(target=goal, **{f"{k}_ok": v for k, v in ok.items()}, match=all(ok.values()))
        rows.append(row)
    cvs = [r["area_cv"] for r in rows if r["area_cv"] is not None]
    # how far the object moves per frame, in pixels (the fitted displacement over T − 1 frames): the speed that
    # a frame-rate condition controls
    travel = [float(np.hypot(*r["displacement"])) / (r["frames"] - 1) for r in rows
              if r["displacement"] is not None and r["frames"] > 1]
    return {
        "n": len(rows),
        "colour_acc": float(np.mean([r["colour_ok"] for r in rows])),
        "shape_acc": float(np.mean([r["shape_ok"] for r in rows])),
        "direction_acc": float(np.mean([r["direction_ok"] for r in rows])),
        "match_rate": float(np.mean([r["match"] for r in rows])),
        "area_cv_mean": float(np.mean(cvs)) if cvs else None,
        "connected_fraction_mean": float(np.mean([r["connected_fraction"] for r in rows])),
        "multiple_objects_rate": float(np.mean([r["multiple_objects"] for r in rows])),
        "travel_per_frame_mean": float(np.mean(travel)) if travel else None,
        "rows": rows,
    }
