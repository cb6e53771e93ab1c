"""The demo's model logic, with no UI in it: which models there are, what each takes, checking a request,
generating it into the output directory, and the gallery of what was made.

``Studio(models, out_dir).generate(Request(...), progress=fn)`` checks the request against its model (a
:class:`DemoError` with a message for a person: an empty prompt for a text model, an image it cannot read,
frames the model cannot make, ...), samples with the pipeline, and writes the video under ``out_dir/videos``
only: a WebM (VP9, what the page plays: Chromium's open-source build plays VP8/VP9 WebM, not always H.264),
an mp4 (H.264, ``moviola.video.save_video``'s format) to download, and an animated GIF for the gallery. Every generation is a
:class:`Record` with its settings, kept in ``Studio.records`` (the gallery) and appended to
``out_dir/generations.jsonl``. ``Studio.compare(record_id, model)`` makes the same request (same seed,
prompt, steps, guidance, sampler) with another model, to put two families side by side.

Progress: ``progress(fraction, text)`` is called as the sampler steps (its tqdm bar is followed while the
pipeline runs, :func:`follow_progress`), or per clip of a long video.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

__all__ = ["DemoError", "DemoModel", "Record", "Request", "Studio", "follow_progress", "write_webm",
           "LONG_MODES", "MAX_FRAMES", "MAX_PROMPT"]

LONG_MODES = ("autoregressive", "fifo")
MAX_FRAMES = 257  # a long video's length is bounded: the page is for trying models, not hour-long jobs
MAX_PROMPT = 300  # characters
MAX_SEED = 2 ** 32 - 1
WEBM_CRF = 4  # VP9 constant quality (with b:v 0): near lossless at these sizes

Progress = Callable[[float, str], None]


class DemoError(ValueError):
    """A request the demo cannot serve; the message is shown to the person as it is (one line)."""


# ----------------------------------------------------------------------------- the models


@dataclass
class DemoModel:
    """One pipeline the page offers, under ``name`` (``moviola.load_pipeline``'s ``Pipeline``)."""

    name: str
    pipe: Any
    path: str = ""

    @property
    def accepts(self) -> frozenset:
        return frozenset(getattr(self.pipe, "accepts", ()))

    @property
    def config(self):
        return self.pipe.config

    @property
    def takes_text(self) -> bool:
        return "text" in self.accepts

    @property
    def takes_labels(self) -> bool:
        return "labels" in self.accepts

    @property
    def takes_image(self) -> bool:
        """A first frame (image-to-video): context frames, or a model that reads image tokens."""
        return "context" in self.accepts or "image_tokens" in self.accepts

    @property
    def takes_fps(self) -> bool:
        return "fps" in self.accepts

    @property
    def shapes(self) -> bool:
        """Trained on Moving Shapes: its prompts are the captions of that data set."""
        return self.config.data.dataset == "shapes"

    @property
    def frames(self) -> int:
        """The length of one clip, what it was trained on."""
        return int(self.config.data.frames)

    @property
    def size(self) -> int:
        return int(self.config.data.size)

    @property
    def family(self) -> str:
        return str(getattr(self.config.model, "family", "") or "")

    @property
    def default_steps(self) -> int:
        return int(self.config.sample.steps)

    @property
    def default_cfg(self) -> float:
        return float(self.config.sample.cfg)

    @property
    def default_sampler(self) -> str:
        return str(self.config.sample.sampler)

    @property
    def default_fps(self) -> float:
        return float(self.pipe.frame_rate())

    @property
    def long_modes(self) -> tuple[str, ...]:
        """Long-video modes: autoregressive continues from context frames; FIFO-Diffusion takes any model."""
        return LONG_MODES if "context" in self.accepts else ("fifo",)

    def fifo_levels(self) -> int:
        """The levels of a FIFO-Diffusion queue with the default options (its steps are a multiple of them)."""
        from moviola.pipelines import FIFO

        options = FIFO()
        latent = self.pipe.autoencoder.latent_shape(self.frames, self.size, self.size)[1]
        return latent * options.partitions // options.frames_per_level

    def prompt_hint(self) -> str:
        """What to type: the Moving Shapes caption grammar for a model trained on it."""
        if self.shapes and (self.takes_text or self.takes_labels):
            from moviola.data.shapes import COLOURS, DIRECTIONS, SHAPES

            return f"a {{{'|'.join(COLOURS)}}} {{{'|'.join(SHAPES)}}} moving {{{'|'.join(DIRECTIONS)}}}"
        if self.takes_text:
            return "a text prompt"
        if self.takes_labels:
            return f"a class number, 0 to {self.config.conditions.num_classes - 1}"
        return "no prompt: this model is unconditional"

    def prompt_example(self) -> str:
        if self.shapes and (self.takes_text or self.takes_labels):
            return "a red circle moving right"
        return "" if self.takes_text or self.takes_labels else "(no prompt)"

    def frame_problem(self, frames: int) -> Optional[str]:
        """Why this model cannot make a video of ``frames`` frames (its autoencoder's rule), or None."""
        try:
            self.pipe.autoencoder.latent_shape(frames, self.size, self.size)
        except ValueError as e:
            rule = self.frame_rule()
            return f"{self.name} cannot make {frames} frames" + (f": it makes {rule}" if rule else f" ({e})")
        return None

    def frame_rule(self) -> str:
        f = int(getattr(self.pipe.autoencoder, "temporal_factor", 1))
        if f > 1:
            return f"1 + {f}k frames (its causal VAE encodes frame 0 alone, then {f} frames at a time: " \
                   f"{', '.join(str(1 + f * k) for k in range(1, 5))}, ...)"
        return ""

    def description(self) -> str:
        """One paragraph on what the model is and takes (markdown)."""
        kind = ("text-to-video" if self.takes_text else "class-conditional" if self.takes_labels
                else "unconditional")
        if self.takes_image:
            kind += " and image-to-video"
        parts = [f"**{self.name}**" + (f" ({self.family})" if self.family else "") + f": {kind}",
                 f"{self.frames} frames of {self.size}×{self.size} per clip"]
        rule = self.frame_rule()
        if rule:
            parts.append(rule.split(" (")[0])
        parts.append("long videos: " + " or ".join(self.long_modes))
        if self.takes_fps:
            parts.append(f"frame-rate conditioned (default {self.default_fps:g} fps)")
        return "; ".join(parts) + "."


def unique_names(paths: Sequence[Union[str, Path]]) -> list[str]:
    """A short name per checkpoint: its folder's name, made unique (``name``, ``name-2``, ...)."""
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(p).name or "model").strip("-") or "model"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------- requests and records


@dataclass
class Request:
    """What the page asks for. ``image``: a first frame's file (image-to-video); ``long``: None, or a long-video
    mode, used when ``frames`` exceed one clip; ``fps``: the frame-rate condition (a model that takes it)."""

    model: str
    prompt: str = ""
    frames: Optional[int] = None
    steps: Optional[int] = None
    cfg: Optional[float] = None
    sampler: Optional[str] = None
    seed: int = 0
    image: Optional[str] = None
    fps: Optional[float] = None
    long: Optional[str] = None


@dataclass
class Record:
    """One generation: its settings as made (defaults filled in), its files, and what was said about it."""

    id: int
    request: Request
    file: str  # the WebM the page plays
    download: str  # the mp4 (H.264)
    thumbnail: str  # an animated GIF for the gallery
    frames: int
    height: int
    width: int
    play_fps: float
    seconds: float
    notes: list[str] = field(default_factory=list)
    compared_with: Optional[int] = None

    def settings(self) -> dict:
        r = self.request
        row = {"id": self.id, "model": r.model, "prompt": r.prompt, "seed": r.seed, "frames": self.frames,
               "size": f"{self.width}×{self.height}", "steps": r.steps, "cfg": r.cfg, "sampler": r.sampler,
               "long": r.long or "", "first frame": Path(r.image).name if r.image else "",
               "fps": r.fps if r.fps is not None else "", "seconds": round(self.seconds, 1)}
        if self.compared_with is not None:
            row["compared with"] = self.compared_with
        return row

    def caption(self) -> str:
        r = self.request
        text = f"#{self.id} {r.model} · {r.prompt or '(no prompt)'} · seed {r.seed} · {self.frames} frames · " \
               f"{r.steps} steps · cfg {r.cfg:g} · {r.sampler}"
        if r.long:
            text += f" · {r.long}"
        if r.image:
            text += " · first frame given"
        return text


TABLE_COLUMNS = ("id", "model", "prompt", "seed", "frames", "size", "steps", "cfg", "sampler", "long",
                 "first frame", "fps", "seconds", "compared with")


# ----------------------------------------------------------------------------- writing


def write_webm(video: np.ndarray, path: Union[str, Path], fps: float) -> Path:
    """uint8 ``(T, H, W, 3)`` as WebM VP9 (yuv420p, near lossless): what browsers play without H.264.
    Odd sizes are padded by repeating the last row / column (yuv420p halves the chroma resolution)."""
    import av

    path = Path(path)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or video.shape[0] == 0:
        raise ValueError(f"write_webm takes uint8 (T, H, W, 3) frames, got {video.dtype} {video.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    _, h, w, _ = video.shape
    if h % 2 or w % 2:
        video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(fps).limit_denominator(1001),
                                      options={"crf": str(WEBM_CRF), "b:v": "0", "deadline": "good",
                                               "cpu-used": "4", "row-mt": "0"})
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode(None))
    return path


# ----------------------------------------------------------------------------- progress


@contextmanager
def follow_progress(progress: Optional[Progress]):
    """While inside, the tqdm bars the pipeline opens (``tqdm.auto.tqdm``: the sampler's steps, a long video's
    frames) report to ``progress(fraction, text)`` instead of the console: the outermost open bar's fraction,
    and the text of both it and an inner bar (a long video's clip being sampled).
    One generation at a time (the Studio holds a lock), so replacing the module attribute is safe here."""
    if progress is None:
        yield
        return
    import tqdm.auto

    original = tqdm.auto.tqdm
    opened: list = []

    def text(bar, n: int) -> str:
        total = bar.total or 0
        desc = bar.label if isinstance(bar.label, str) and bar.label else "sampling"
        unit = "steps" if bar.what == "it" else f"{bar.what}s"
        return f"{desc}: {n}/{total} {unit}" if total else desc

    def report(bar, n: int) -> None:
        outer = opened[0] if opened else bar
        done = n if bar is outer else outer._done
        fraction = min(1.0, done / outer.total) if outer.total else 0.0
        message = text(outer, done) if bar is outer else f"{text(outer, done)} · {text(bar, n)}"
        progress(fraction, message)

    class Followed(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            # a disabled bar keeps no desc or unit: kept here (tqdm's arguments: iterable, desc, total, ...)
            self.label = kwargs.get("desc", args[1] if len(args) > 1 else None)
            self.what = kwargs.get("unit", "it")
            kwargs["disable"] = True  # silent: counted here, not drawn
            super().__init__(*args, **kwargs)
            self._done = 0
            opened.append(self)
            report(self, 0)

        def __iter__(self):
            for item in super().__iter__():
                yield item
                self._done += 1
                report(self, self._done)

        def update(self, n=1):
            self._done += n
            report(self, self._done)
            return super().update(n)

        def close(self):
            if self in opened:
                opened.remove(self)
            return super().close()

    tqdm.auto.tqdm = Followed
    try:
        yield
    finally:
        tqdm.auto.tqdm = original


# ----------------------------------------------------------------------------- the studio


def _number(value, name: str, kind=float):
    """A number from the page (may arrive as float, str or None) as ``kind``; DemoError when it is not one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise DemoError(f"{name} must be a finite number, got {value!r}")
    if kind is int:
        if x != int(x):
            raise DemoError(f"{name} must be a whole number, got {value!r}")
        return int(x)
    return x


class Studio:
    """The models, the output directory and the gallery of what was made since it started."""

    def __init__(self, models: Sequence[DemoModel], out_dir: Union[str, Path]):
        if not models:
            raise ValueError("the demo needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.models = {m.name: m for m in models}
        self.out_dir = Path(out_dir).resolve()
        # what the page may send: the videos (and Gradio's uploads, app.confine_files), in a folder of their own,
        # so the log and anything else in out_dir (``--out-dir .``) stay private
        self.served = self.out_dir / "served"
        self.videos = self.served / "videos"
        self.videos.mkdir(parents=True, exist_ok=True)
        self.records: list[Record] = []
        # ids go on from an earlier session's in the same folder, so its files are never overwritten
        self._first_id = _generations_so_far(self.out_dir / "generations.jsonl")
        self._lock = threading.Lock()

    # ------------------------------------------------------------ look-ups
    @property
    def names(self) -> list[str]:
        return list(self.models)

    def model(self, name: Optional[str]) -> DemoModel:
        if name not in self.models:
            raise DemoError(f"no model {name!r} here: choose one of {', '.join(self.models)}")
        return self.models[name]

    def record(self, record_id) -> Record:
        for r in self.records:
            if r.id == record_id:
                return r
        raise DemoError("generate a video first, then compare it with another model")

    # ------------------------------------------------------------ checking
    def check(self, req: Request) -> tuple[Request, dict, list[str]]:
        """The request with every default filled in, the pipeline's keyword arguments, and notes; a DemoError
        with a message for a person when the model cannot serve it. Nothing is sampled here."""
        from moviola.diffusion.samplers import SAMPLERS

        m = self.model(req.model)
        notes: list[str] = []
        prompt = (req.prompt or "").strip()
        if len(prompt) > MAX_PROMPT:
            raise DemoError(f"the prompt is {len(prompt)} characters long: keep it under {MAX_PROMPT}")
        kwargs: dict = {}
        if m.takes_text:
            if not prompt:
                raise DemoError(f"type a prompt: {m.name} is a text-to-video model"
                                + (f" (try \"{m.prompt_hint()}\")" if m.shapes else ""))
            kwargs["prompt"] = [prompt]
        elif m.takes_labels:
            kwargs["labels"] = [self._label(m, prompt)]
        elif prompt:
            notes.append(f"{m.name} is unconditional: the prompt is not used")

        frames = _number(req.frames, "frames", int)
        frames = m.frames if frames is None else frames
        if not 1 <= frames <= MAX_FRAMES:
            raise DemoError(f"frames must be 1 to {MAX_FRAMES}, got {frames}")
        problem = m.frame_problem(frames)
        if problem:
            raise DemoError(problem)
        long = req.long or None
        if long is not None and long not in LONG_MODES:
            raise DemoError(f"unknown long-video mode {long!r}: choose {' or '.join(LONG_MODES)}")
        if frames <= m.frames:
            long = None  # one clip makes it
        elif long is None:
            raise DemoError(f"{m.name} makes {m.frames} frames in one clip: for {frames} frames choose a long-video "
                            f"mode ({' or '.join(m.long_modes)}), or ask for at most {m.frames} frames")
        elif long not in m.long_modes:
            raise DemoError(f"{m.name} cannot make a long video {long}: it takes no context frames (choose fifo)")
        if long is not None:
            from moviola.pipelines import FIFO, Autoregressive

            kwargs["long"] = Autoregressive() if long == "autoregressive" else FIFO()

        steps = _number(req.steps, "steps", int)
        steps = m.default_steps if steps is None else steps
        num_timesteps = int(m.pipe.schedule.num_timesteps)
        if not 1 <= steps <= num_timesteps:
            raise DemoError(f"steps must be 1 to {num_timesteps}, got {steps}")
        if long == "fifo":  # each frame walks the queue's levels: steps are a multiple of them
            levels = m.fifo_levels()
            rounded = min(levels * math.ceil(steps / levels), levels * (num_timesteps // levels))
            if rounded != steps:
                notes.append(f"{rounded} steps instead of {steps}: a fifo long video takes a multiple of its "
                             f"queue's {levels} levels")
                steps = rounded
        cfg = _number(req.cfg, "guidance")
        cfg = m.default_cfg if cfg is None else cfg
        if not 0 <= cfg <= 50:
            raise DemoError(f"guidance must be 0 to 50, got {cfg:g}")
        sampler = req.sampler or m.default_sampler
        if sampler not in SAMPLERS:
            raise DemoError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        seed = _number(req.seed, "seed", int)
        seed = 0 if seed is None else seed
        if not 0 <= seed <= MAX_SEED:
            raise DemoError(f"seed must be 0 to {MAX_SEED}, got {seed}")

        fps = _number(req.fps, "fps")
        if m.takes_fps:
            fps = m.default_fps if fps is None else fps
            if not 0 < fps <= 120:
                raise DemoError(f"fps must be above 0 and at most 120, got {fps:g}")
            kwargs["fps"] = fps
        else:
            fps = None  # the model has no frame-rate condition: its files play at its own rate

        image = req.image or None
        if image is not None:
            if not m.takes_image:
                raise DemoError(f"{m.name} does not take a first frame (it was trained without context frames): "
                                "remove the image, or choose an image-to-video model")
            if long == "fifo":
                raise DemoError("fifo long videos take no first frame: choose autoregressive, or remove the image")
            self.check_image(image)
            kwargs["image"] = image

        done = dataclasses.replace(req, prompt=prompt, frames=frames, steps=steps, cfg=cfg, sampler=sampler,
                                   seed=seed, fps=fps, image=image, long=long)
        kwargs.update(num_videos=1, num_frames=frames, steps=steps, cfg=cfg, sampler=sampler, seed=seed)
        return done, kwargs, notes

    @staticmethod
    def _label(m: DemoModel, prompt: str) -> int:
        """A class model's label from the prompt: a Moving Shapes caption, or the class number."""
        if not prompt:
            raise DemoError(f"type a prompt: {m.name} is class-conditional (try \"{m.prompt_hint()}\")")
        n = m.config.conditions.num_classes
        if m.shapes:
            from moviola.data.shapes import NUM_CLASSES, class_label, parse_caption

            parsed = parse_caption(prompt)
            if parsed is not None and n == NUM_CLASSES:
                return class_label(*parsed)
        if prompt.isdigit() and int(prompt) < n:
            return int(prompt)
        raise DemoError(f"{m.name} is class-conditional: type {m.prompt_hint()}"
                        + (f", or a class number 0 to {n - 1}" if m.shapes else ""))

    @staticmethod
    def check_image(image: str) -> None:
        """A DemoError unless ``image`` reads as a picture (or a video's first frame)."""
        from moviola.video import read_image

        name = Path(image).name
        try:
            frame = read_image(image)
        except FileNotFoundError:
            raise DemoError(f"the first frame {name} is gone: upload it again") from None
        except (ValueError, OSError):
            raise DemoError(f"cannot read {name} as an image: upload a PNG, JPEG, WebP or BMP picture "
                            "(or a video, whose first frame is taken)") from None
        if frame.ndim != 3 or min(frame.shape[:2]) < 1:
            raise DemoError(f"cannot read {name} as an image: it has no pixels")

    # ------------------------------------------------------------ generating
    def generate(self, req: Request, progress: Optional[Progress] = None) -> Record:
        """Check, sample and write one video under ``out_dir/videos``; a DemoError for what cannot be made."""
        done, kwargs, notes = self.check(req)
        m = self.model(done.model)
        with self._lock:
            if progress is not None:
                progress(0.0, f"{m.name}: starting")
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with follow_progress(progress):
                        video = m.pipe(progress=progress is not None, **kwargs)
                except DemoError:
                    raise
                except ValueError as e:  # the pipeline's own checks: a one-line message naming the problem
                    raise DemoError(_one_line(str(e))) from None
                except MemoryError:
                    raise DemoError("out of memory: ask for fewer frames") from None
                except RuntimeError as e:
                    if "out of memory" in str(e) or "can't allocate memory" in str(e):
                        raise DemoError("out of memory: ask for fewer frames") from None
                    raise
            seconds = time.perf_counter() - start
            notes += list(dict.fromkeys(_one_line(str(w.message)) for w in caught
                                        if issubclass(w.category, UserWarning)))
            record_id = self._first_id + len(self.records) + 1
            frames = _to_frames(video[0])
            play_fps = float(m.pipe.frame_rate(done.fps))
            stem = f"{record_id:04d}-{done.model}-seed{done.seed}"
            webm = write_webm(frames, self.videos / f"{stem}.webm", play_fps)
            from moviola.video import save_video

            mp4 = save_video(frames, self.videos / f"{stem}.mp4", fps=play_fps)
            gif = save_video(frames, self.videos / f"{stem}.gif", fps=play_fps)
            record = Record(record_id, done, str(webm), str(mp4), str(gif), frames.shape[0], frames.shape[1],
                            frames.shape[2], play_fps, seconds, notes)
            self.records.append(record)
            with open(self.out_dir / "generations.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({**record.settings(), "file": webm.name, "download": mp4.name,
                                    "notes": notes}) + "\n")
            if progress is not None:
                progress(1.0, "done")
            return record

    def compare(self, record_id, model: str, progress: Optional[Progress] = None) -> Record:
        """Record ``record_id``'s request made with ``model``: same prompt, seed, steps, guidance and sampler. The
        frame count falls back to the other model's clip length when it cannot make it (so 16-frame and 17-frame
        models compare), and a first frame is left out for a model that takes none; both are said in its notes."""
        base = self.record(record_id)
        other = self.model(model)
        if other.name == base.request.model:
            raise DemoError(f"#{base.id} was made with {other.name}: choose another model to compare with")
        req, notes = dataclasses.replace(base.request, model=other.name), []
        base_model = self.models.get(base.request.model)
        wanted = base.frames
        if (base_model is not None and wanted == base_model.frames) or other.frame_problem(wanted) or (
                wanted > other.frames and not req.long):
            if wanted != other.frames:
                notes.append(f"{other.frames} frames instead of {wanted}: one clip of {other.name}")
            req = dataclasses.replace(req, frames=other.frames, long=None)
        if req.long and req.long not in other.long_modes:
            notes.append(f"long video by fifo instead of {req.long}: {other.name} takes no context frames")
            req = dataclasses.replace(req, long="fifo")
        if req.image and (not other.takes_image or req.long == "fifo"):
            notes.append(f"without the first frame: {other.name} takes none" if not other.takes_image
                         else "without the first frame: fifo long videos take none")
            req = dataclasses.replace(req, image=None)
        if not other.takes_fps:
            req = dataclasses.replace(req, fps=None)
        record = self.generate(req, progress)
        record.notes[:0] = notes
        record.compared_with = base.id
        return record

    def gallery(self) -> list[tuple[str, str]]:
        """(animated GIF, caption) of every generation, newest first: the thumbnails play side by side."""
        return [(r.thumbnail, r.caption()) for r in reversed(self.records)]

    def table(self) -> list[list]:
        """The settings of every generation, newest first, in :data:`TABLE_COLUMNS` order."""
        return [[r.settings().get(c, "") for c in TABLE_COLUMNS] for r in reversed(self.records)]


def _to_frames(video) -> np.ndarray:
    from moviola.video import to_uint8

    return to_uint8(video)  # (C, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8


def _one_line(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return "".join(c if c.isprintable() else " " for c in text)


def _generations_so_far(log: Path) -> int:
    """The largest generation id an earlier session wrote to ``log`` (0 for none or an unreadable log)."""
    best = 0
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            best = max(best, int(json.loads(line).get("id", 0)))
        except (ValueError, TypeError, AttributeError):
            continue
    return best
