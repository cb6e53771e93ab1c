"""Moving Shapes v1: procedural, captioned clips with ground truth for every attribute.

Implements /work/shared/moving_shapes.md (the spec is the contract; this file follows it):
one anti-aliased object (circle / square / triangle, r = 3S/16) on a black S x S canvas, moving
left / right / up / down at S/32 pixels per frame. Every clip is a pure function of
(seed, split, index), so the same seed gives the same bytes on every machine.

Choices the spec leaves open (kept fixed: changing any of them changes the benchmark):
- Positions are float centres; for the triangle the centre is the centre of its bounding box,
  so every shape spans [c - r, c + r] on both axes.
- Supersampling takes the 4x4 sub-pixel centres ``x + (k + 0.5) / 4`` of each pixel; a pixel's
  value is ``round(coverage * rgb)``.
- Attributes cycle with the index, so any run of consecutive indices is class-balanced:
  ``train`` uses the 40 non-hold-out combinations in label order (``index % 40``), ``test`` all
  48 (``index % 48``, so its label equals ``index % 48``). Only the start position is random.
- The random stream is ``np.random.default_rng([seed, split_id, index])`` (PCG64, platform
  independent), split ids train = 0, test = 1, so train and test positions differ.
- Without bounce the start is uniform over all positions that keep the object inside for all T
  frames; the default ``render_clip`` start centres the trajectory on the canvas. With bounce the
  start is uniform over the canvas and the centre reflects off the walls at ``r`` and ``S - r``.

Frame strides (beyond the spec, for frame-rate conditioning; data/strides.py): a clip of T frames at
stride ``s`` is frames ``0, s, 2s, ...`` of clip ``index`` rendered with ``(T - 1) * s + 1`` frames, so
its object moves ``s * S/32`` pixels per frame. Without bounce that longer clip must fit:
``(T - 1) * s + 1 <= 21``. Stride 1 is the spec's clip, unchanged. ``data.fps`` (default 8, the spec's
rate, at which ``write_shapes_folder``'s files play) is what a run conditions on: a stride-s clip is at 8 / s fps.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from moviola.data.strides import check_strides, draw_stride

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 50, 50),
    "green": (50, 200, 80),
    "blue": (60, 100, 240),
    "yellow": (240, 220, 50),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# unit velocity per direction, image coordinates: +y is down
VELOCITY: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
HOLDOUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "triangle", "up"),
        ("green", "circle", "left"),
        ("blue", "square", "down"),
        ("yellow", "triangle", "right"),
        ("red", "square", "left"),
        ("green", "triangle", "down"),
        ("blue", "circle", "up"),
        ("yellow", "square", "up"),
    }
)
SIZES: tuple[int, ...] = (32, 64, 128, 256)
SPLITS: dict[str, int] = {"train": 0, "test": 1}
NUM_CLASSES = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)  # 48
SUPERSAMPLE = 4
DEFAULT_FPS = 8

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "HOLDOUT",
    "NUM_CLASSES",
    "SHAPES",
    "SIZES",
    "MovingShapes",
    "caption",
    "class_label",
    "combos",
    "label_to_attributes",
    "max_frames_without_bounce",
    "parse_caption",
    "radius",
    "render_clip",
    "sample_clip",
    "span",
    "speed",
    "write_shapes_folder",
]


# ----------------------------------------------------------------------------- labels


def _check_attributes(colour: str, shape: str, direction: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {list(DIRECTIONS)}")


def class_label(colour: str, shape: str, direction: str) -> int:
    """``(colour_index * 3 + shape_index) * 4 + direction_index``, in the spec's orders."""
    _check_attributes(colour, shape, direction)
    c, s, d = list(COLOURS).index(colour), SHAPES.index(shape), DIRECTIONS.index(direction)
    return (c * len(SHAPES) + s) * len(DIRECTIONS) + d


def label_to_attributes(label: int) -> tuple[str, str, str]:
    """Inverse of :func:`class_label`: ``label -> (colour, shape, direction)``."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    cs, d = divmod(label, len(DIRECTIONS))
    c, s = divmod(cs, len(SHAPES))
    return list(COLOURS)[c], SHAPES[s], DIRECTIONS[d]


def caption(colour: str, shape: str, direction: str) -> str:
    """The prompt a clip is captioned with: ``a red circle moving right``."""
    _check_attributes(colour, shape, direction)
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> Optional[tuple[str, str, str]]:
    """``(colour, shape, direction)`` of a caption :func:`caption` writes (case and spaces free), else None."""
    words = text.lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        return None
    colour, shape, direction = words[1], words[2], words[4]
    if colour in COLOURS and shape in SHAPES and direction in DIRECTIONS:
        return colour, shape, direction
    return None


def combos(split: str) -> list[tuple[str, str, str]]:
    """The (colour, shape, direction) combinations a split cycles through, in label order."""
    _check_split(split)
    every = [label_to_attributes(k) for k in range(NUM_CLASSES)]
    return [c for c in every if c not in HOLDOUT] if split == "train" else every


# ----------------------------------------------------------------------------- geometry


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def radius(size: int) -> float:
    """Object half-extent r = 3S/16: every shape spans 2r on both axes."""
    return 3 * size / 16


def speed(size: int) -> float:
    """Pixels per frame: S/32."""
    return size / 32


def max_frames_without_bounce(size: int) -> int:
    """Largest T whose travel ``(T-1) * S/32`` fits in the free span ``S - 2r`` (21 for every S)."""
    free = Fraction(size) - 2 * Fraction(3 * size, 16)
    return int(free / Fraction(size, 32)) + 1


def span(frames: int, stride: int = 1) -> int:
    """Frames of motion a clip of ``frames`` frames at ``stride`` covers: ``(frames - 1) * stride + 1``."""
    return (int(frames) - 1) * int(stride) + 1


def _check_stride(stride: int, frames: int, size: int, bounce: bool) -> None:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    limit = max_frames_without_bounce(size)
    if not bounce and span(frames, stride) > limit:
        raise ValueError(
            f"frames={frames} at stride {stride} spans {span(frames, stride)} frames of motion, which does not fit "
            f"without bounce (limit (frames - 1) * stride + 1 <= {limit} on a {size}x{size} canvas); use bounce=True "
            f"or at most {(limit - 1) // stride + 1} frames"
        )


def _check_frames(frames: int, size: int, bounce: bool) -> None:
    if not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    limit = max_frames_without_bounce(size)
    if not bounce and frames > limit:
        raise ValueError(
            f"frames={frames} does not fit without bounce: the object leaves the {size}x{size} canvas "
            f"after {limit} frames (limit T <= {limit}); use bounce=True for longer clips"
        )


def _trajectory(
    direction: str, size: int, frames: int, start: tuple[float, float], bounce: bool
) -> np.ndarray:
    """Float centres ``(T, 2)`` as (x, y); with bounce the centre reflects off ``r`` and ``S - r``."""
    r, v = radius(size), speed(size)
    vel = np.array(VELOCITY[direction], dtype=np.float64) * v
    pos = np.array(start, dtype=np.float64)
    out = np.empty((frames, 2), dtype=np.float64)
    lo, hi = r, size - r
    for t in range(frames):
        out[t] = pos
        pos = pos + vel
        if bounce:
            # one reflection per step is enough: the free span 5S/8 is far longer than a step S/32
            for axis in range(2):
                if pos[axis] > hi:
                    pos[axis], vel[axis] = 2 * hi - pos[axis], -vel[axis]
                elif pos[axis] < lo:
                    pos[axis], vel[axis] = 2 * lo - pos[axis], -vel[axis]
    return out


def _coverage(shape: str, cx: float, cy: float, r: float, size: int) -> tuple[np.ndarray, int, int]:
    """Fraction of each pixel covered by the shape, only over the shape's pixel bounding box.

    Returns ``(coverage (h, w) float, y0, x0)``: the box's offset in the canvas. Evaluating the
    4x-supersampled mask on the box alone keeps S = 256 as cheap as S = 32 per object pixel.
    """
    x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 1, size)
    y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 1, size)
    n = SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * n, dtype=np.float64) + 0.5) / n  # sub-pixel centres
    ys = y0 + (np.arange((y1 - y0) * n, dtype=np.float64) + 0.5) / n
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    if shape == "circle":
        mask = dx * dx + dy * dy <= r * r
    elif shape == "square":
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "triangle":
        depth = dy + r  # distance below the apex at (cx, cy - r); the base is at depth 2r
        mask = (depth >= 0) & (depth <= 2 * r) & (np.abs(dx) <= depth / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    # box filter: (h*n, w*n) -> (h, n, w, n) -> mean over each n x n block
    hits = mask.reshape(y1 - y0, n, x1 - x0, n).sum(axis=(1, 3))
    return hits / (n * n), y0, x0


def _inside(centres: np.ndarray, size: int) -> bool:
    r, eps = radius(size), 1e-9
    return bool(((centres >= r - eps) & (centres <= size - r + eps)).all())


def render_clip(
    colour: str,
    shape: str,
    direction: str,
    size: int = 32,
    frames: int = 16,
    start: Optional[tuple[float, float]] = None,
    bounce: bool = False,
    rgb: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Render one clip as uint8 ``(T, S, S, 3)``.

    ``start`` is the object's float centre (x, y) in frame 0; the default centres the whole
    trajectory on the canvas. ``rgb`` draws the object in that colour instead of ``colour``'s (a palette). Without bounce T is limited so the object stays inside
    (:func:`max_frames_without_bounce`), and a start that would leave the canvas is an error.
    """
    _check_attributes(colour, shape, direction)
    _check_size(size)
    _check_frames(frames, size, bounce)
    r = radius(size)
    if start is None:
        travel = (frames - 1) * speed(size) if not bounce else 0.0
        vx, vy = VELOCITY[direction]
        start = (size / 2 - vx * travel / 2, size / 2 - vy * travel / 2)
    centres = _trajectory(direction, size, frames, (float(start[0]), float(start[1])), bounce)
    if not _inside(centres, size):
        limits = f"[{r:g}, {size - r:g}]"
        raise ValueError(
            f"start {tuple(start)} puts the {shape} (half-extent r={r:g}) outside the {size}x{size} canvas "
            f"within {frames} frames; centres must stay in {limits} on both axes"
        )
    rgb = np.array(COLOURS[colour] if rgb is None else _checked_rgb(rgb), dtype=np.float64)
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for t, (cx, cy) in enumerate(centres):
        cov, y0, x0 = _coverage(shape, cx, cy, r, size)
        h, w = cov.shape
        video[t, y0 : y0 + h, x0 : x0 + w] = np.rint(cov[..., None] * rgb).astype(np.uint8)
    return video


def _checked_rgb(rgb: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(rgb)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise ValueError(f"a colour must be three ints in 0..255 (R, G, B), got {rgb!r}")
    return tuple(int(v) for v in values)


def _checked_palette(palette: Optional[dict]) -> dict[str, tuple[int, int, int]]:
    """``{colour word: (R, G, B)}``: the words the clips of that colour are drawn in instead (a recolouring)."""
    out = {}
    for word, rgb in (palette or {}).items():
        if word not in COLOURS:
            raise ValueError(f"palette: unknown colour {word!r}; expected some of {list(COLOURS)}")
        out[word] = _checked_rgb(rgb)
    return out


# ----------------------------------------------------------------------------- sampling


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def sample_clip(
    seed: int, index: int, split: str = "train", size: int = 32, frames: int = 16, bounce: bool = False,
    stride: int = 1, palette: Optional[dict] = None,
) -> dict:
    """Clip ``index`` of a split: a pure function of (seed, split, index) and the render args.

    ``stride`` s: frames ``0, s, 2s, ...`` of the clip rendered with ``(frames - 1) * s + 1`` frames
    (the object moves s times farther per frame); 1 is the spec's clip. ``palette`` ``{word: (R, G, B)}``
    draws the colours it names in other RGB values; attributes, label and caption keep the word.

    Returns ``dict(video uint8 (T,S,S,3), colour, shape, direction, label, caption)``.
    """
    _check_split(split)
    _check_size(size)
    _check_frames(frames, size, bounce)
    _check_stride(stride, frames, size, bounce)
    palette = _checked_palette(palette)
    if stride != 1:
        item = sample_clip(seed, index, split, size, span(frames, stride), bounce, palette=palette)
        item["video"] = np.ascontiguousarray(item["video"][::stride])
        return item
    rng = _rng(seed, split, index)
    table = combos(split)
    colour, shape, direction = table[int(index) % len(table)]
    r = radius(size)
    travel = 0.0 if bounce else (frames - 1) * speed(size)
    vx, vy = VELOCITY[direction]
    # start range per axis: the moving axis loses `travel` at the end it moves towards
    lo = np.array([r - min(vx, 0) * travel, r - min(vy, 0) * travel])
    hi = np.array([size - r - max(vx, 0) * travel, size - r - max(vy, 0) * travel])
    start = lo + rng.random(2) * (hi - lo)
    video = render_clip(colour, shape, direction, size, frames, (float(start[0]), float(start[1])), bounce,
                        rgb=palette.get(colour))
    return {
        "video": video,
        "colour": colour,
        "shape": shape,
        "direction": direction,
        "label": class_label(colour, shape, direction),
        "caption": caption(colour, shape, direction),
    }


class MovingShapes(Dataset):
    """``count`` Moving Shapes clips as ``dict(video (3,T,S,S) float in [-1,1], label int64, caption)``.

    Clips are rendered on first access and, with ``cache=True``, kept in memory as uint8
    (16 KB per 32x32x16 clip); each DataLoader worker holds its own cache.

    ``stride``: every clip at that frame stride (1: the spec's clips). ``strides``: a list of strides,
    each clip drawing its own from ``(seed, index)`` (data/strides.py); items then carry ``stride`` (int).
    ``palette``: ``{colour word: (R, G, B)}`` (``data.palette``), those colours drawn in other values.
    """

    name = "Moving Shapes"
    num_classes = NUM_CLASSES  # what a class-conditional run on it must take (conditions.num_classes)

    def __init__(
        self,
        split: str = "train",
        count: int = 1024,
        size: int = 32,
        frames: int = 16,
        seed: int = 0,
        bounce: bool = False,
        cache: bool = True,
        stride: int = 1,
        strides: Optional[Sequence[int]] = None,
        palette: Optional[dict] = None,
    ) -> None:
        _check_split(split)
        self.palette = _checked_palette(palette)
        _check_size(size)
        _check_frames(frames, size, bounce)
        self.strides = check_strides(strides)
        for s in (stride,) if self.strides is None else (max(self.strides),):
            _check_stride(s, frames, size, bounce)
        if not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count must be a positive int, got {count!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.split, self.count, self.size, self.frames = split, int(count), size, int(frames)
        self.seed, self.bounce, self.cache = int(seed), bool(bounce), bool(cache)
        self.stride = int(stride)
        self._cache: dict[int, dict] = {}

    def stride_of(self, index: int) -> int:
        """Clip ``index``'s frame stride: drawn from ``strides`` by ``(seed, index)``, else ``stride``."""
        if self.strides is None:
            return self.stride
        return draw_stride(self.strides, self.seed, int(index) % self.count)

    def __len__(self) -> int:
        return self.count

    def clip(self, index: int) -> dict:
        """The raw :func:`sample_clip` dict (uint8 video plus attributes) for ``index``."""
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} clips")
        index = int(index) % self.count
        if index in self._cache:
            return self._cache[index]
        stride = self.stride_of(index)
        item = sample_clip(self.seed, index, self.split, self.size, self.frames, self.bounce, stride, self.palette)
        if self.strides is not None:
            item["stride"] = stride
        if self.cache:
            self._cache[index] = item
        return item

    def caption_of(self, index: int) -> str:
        """Clip ``index``'s caption without rendering it (the split's combinations cycle with the index)."""
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} clips")
        table = combos(self.split)
        return caption(*table[(int(index) % self.count) % len(table)])

    def __getitem__(self, index: int) -> dict:
        from moviola.video import from_uint8

        item = self.clip(index)
        out = {
            "video": from_uint8(item["video"]),
            "label": torch.tensor(item["label"], dtype=torch.int64),
            "caption": item["caption"],
        }
        if "stride" in item:
            out["stride"] = item["stride"]
        return out


def write_shapes_folder(
    out_dir: Union[str, Path],
    split: str = "test",
    count: int = 96,
    size: int = 32,
    frames: int = 16,
    seed: int = 0,
    bounce: bool = False,
    fps: float = DEFAULT_FPS,
) -> Path:
    """Write clips ``000000.mp4 ...`` plus ``captions.jsonl`` (file, caption, label, attributes).

    The mp4s use the high-quality settings of :func:`moviola.video.save_video`, so the decoded
    files still score as matches and the folder can be read back by ``VideoFolder``.
    """
    from moviola.video import save_video

    dataset = MovingShapes(split, count, size, frames, seed, bounce, cache=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        item = dataset.clip(index)
        name = f"{index:06d}.mp4"
        save_video(item["video"], out / name, fps=fps)
        record = {k: item[k] for k in ("caption", "label", "colour", "shape", "direction")}
        lines.append(json.dumps({"file": name, **record}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return out
