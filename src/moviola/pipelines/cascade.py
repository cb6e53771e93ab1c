"""Cascades: a base model followed by stages, each its own checkpoint, in one call.

``run_cascade("cascade.yaml", prompt=["a red circle moving right"], seed=0)`` (or ``moviola sample cascade.yaml
--prompt ... --out out.mp4``) samples the base model, then runs each stage on the video the one before made:
super-resolution (an upsampler, ``pipelines/upsample.py``: W.A.L.T's 2× latent SR, Video LDM's temporally aligned
upsampler over chunks of frames) and interpolation (``pipelines/interpolate.py``: Video LDM's T → 4T, 4T → 16T).
Stages pass pixels: each stage encodes with its own autoencoder, so the checkpoints need not share a latent space.

The cascade file (every key checked; an unknown key is an error naming the closest known one; relative
checkpoint paths are resolved against the file's folder)::

    base: CHECKPOINT                  # or a mapping: {checkpoint: CHECKPOINT, num_frames, long, fps, steps, ...}
    stages:
      - upsample: CHECKPOINT          # an upsampler (conditions.low_res)
        noise_level: 50               # its augmentation level (default: its sample.noise_level)
        chunk_frames: 8               # frames per chunk (default: its data.frames); overlap: 0
      - interpolate: CHECKPOINT       # a keyframes model (conditions.context_mode: keyframes)
        factor: 4                     # 4 (T → 4T − 3) or 16 (two levels); level: 1 or 2 (factor 4 only)
    prompt: "a red circle moving right"   # or a list; negative_prompt; labels: an int or a list
    num_videos: 1                     # videos per prompt or label (in all, without them)
    seed: 0

Every stage (the base too) takes ``steps``, ``sampler``, ``cfg`` and ``eta`` (default: that checkpoint's
``sample:`` section); an interpolation stage also ``context_guidance``. The base's ``long`` is a mode
(``autoregressive``, ``fifo``) or a mapping ``{mode: fifo, partitions: 2, lookahead: false, init: noise,
frames_per_level: 1}`` / ``{mode: autoregressive, context_frames: 2}`` (docs/long_videos.md), with
``num_frames`` the video's length. The prompt goes to every model that takes text, the labels to every model
that takes classes; a model that needs one the cascade does not give is an error.

Everything is checked before any weights load (:func:`plan_cascade`): the file's keys and values, that each
checkpoint exists and is of its role (a base is no upsampler, an upsample stage is one, an interpolation stage
was trained on keyframes with a frame-wise autoencoder), the conditions each needs, the noise levels and step
counts against each schedule, and the frame counts and sizes through the chain. The checkpoints are then
loaded one at a time, each freed before the next.

Seeds: the base's video i uses ``seed + i`` (the video ``pipe(...)`` gives); stage s ≥ 1 of video i starts from
``chunk_seed(seed + i, s)`` and derives its chunks' or windows' seeds from it. A cascade is a pure function of
its file and its seed. The written frame rate is the base's (its fps condition, or 8) times each interpolation's
factor: the video lasts as long as the base's.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from moviola.config import ConfigError, RunConfig, autoencoder_spatial_factor, autoencoder_temporal_factor, yaml_load
from moviola.data.strides import default_fps
from moviola.diffusion.samplers import SAMPLERS
from moviola.io.checkpoint import resolve_checkpoint
from moviola.models.loading import load_run_config
from moviola.pipelines.base import WRITE_FPS
from moviola.pipelines.fifo import FIFO
from moviola.pipelines.generate import load_pipeline
from moviola.pipelines.inputs import as_labels, as_prompts, check_seed, checked_int
from moviola.pipelines.interpolate import count_windows, interpolate, interpolated_frames, keyframes_in, levels_of
from moviola.pipelines.long_video import MODES, Autoregressive, chunk_seed, long_options
from moviola.pipelines.upsample import frame_chunks, upsample

SAMPLING_KEYS = ("steps", "sampler", "cfg", "eta")
TOP_KEYS = ("base", "stages", "prompt", "negative_prompt", "labels", "num_videos", "seed")
BASE_KEYS = ("checkpoint", "num_frames", "long", "fps", *SAMPLING_KEYS)
UPSAMPLE_KEYS = ("upsample", "noise_level", "chunk_frames", "overlap", *SAMPLING_KEYS)
INTERPOLATE_KEYS = ("interpolate", "factor", "level", "context_guidance", *SAMPLING_KEYS)
LONG_KEYS = {"autoregressive": ("mode", "context_frames"),
             "fifo": ("mode", "partitions", "lookahead", "init", "frames_per_level")}


@dataclass(frozen=True)
class StageSampling:
    """A stage's sampling keys; None: its checkpoint's ``sample:`` value."""

    steps: Optional[int] = None
    sampler: Optional[str] = None
    cfg: Optional[float] = None
    eta: Optional[float] = None

    def kwargs(self) -> dict:
        return dict(steps=self.steps, sampler=self.sampler, cfg=self.cfg, eta=self.eta)


@dataclass(frozen=True)
class Base:
    checkpoint: Path
    num_frames: Optional[int] = None
    long: Union[None, str, Autoregressive, FIFO] = None
    fps: Optional[float] = None
    sampling: StageSampling = StageSampling()


@dataclass(frozen=True)
class Upsample:
    checkpoint: Path
    noise_level: Optional[int] = None
    chunk_frames: Optional[int] = None
    overlap: int = 0
    sampling: StageSampling = StageSampling()


@dataclass(frozen=True)
class Interpolate:
    checkpoint: Path
    factor: int = 4
    level: Optional[int] = None
    context_guidance: float = 1.0
    sampling: StageSampling = StageSampling()


Stage = Union[Upsample, Interpolate]


@dataclass(frozen=True)
class Cascade:
    """A cascade file, read and checked (:func:`load_cascade`); ``source`` names it in messages."""

    base: Base
    stages: tuple[Stage, ...] = ()
    prompt: Optional[tuple[str, ...]] = None
    negative_prompt: Optional[str] = None
    labels: Optional[tuple[int, ...]] = None
    num_videos: Optional[int] = None
    seed: int = 0
    source: str = "cascade"


# ---------------------------------------------------------------------------------------------- the file
class _Reader:
    """Strict reading of one cascade tree: every error is a ConfigError naming the file and the key."""

    def __init__(self, source: str, root: Path):
        self.source, self.root = source, root

    def error(self, where: str, text: str) -> ConfigError:
        return ConfigError(f"cascade {self.source}: {where}: {text}")

    def mapping(self, tree, allowed: Sequence[str], where: str) -> dict:
        if not isinstance(tree, dict):
            raise self.error(where, f"expected a mapping of {', '.join(allowed)}; got {tree!r}")
        for key in tree:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(allowed)}"
                raise self.error(f"{where}.{key}" if where else str(key), f"unknown key ({hint})")
        return tree

    def integer(self, value, where: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise self.error(where, f"must be {span}, got {value}")
        return value

    def number(self, value, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(where, f"expected a finite number, got {value!r}")
        return float(value)

    def path(self, value, where: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"expected a checkpoint path (a string), got {value!r}")
        p = Path(value).expanduser()
        return Path(os.path.normpath(p if p.is_absolute() else self.root / p))

    def sampling(self, tree: dict, where: str) -> StageSampling:
        out = {}
        for key in ("steps",):
            if tree.get(key) is not None:
                out[key] = self.integer(tree[key], f"{where}.{key}", low=1)
        for key in ("cfg",):
            if tree.get(key) is not None:
                out[key] = self.number(tree[key], f"{where}.{key}")
        if tree.get("eta") is not None:
            out["eta"] = self.number(tree["eta"], f"{where}.eta")
            if out["eta"] < 0:
                raise self.error(f"{where}.eta", f"must be 0 or more, got {out['eta']:g}")
        if tree.get("sampler") is not None:
            if tree["sampler"] not in SAMPLERS:
                close = difflib.get_close_matches(str(tree["sampler"]), list(SAMPLERS), n=1)
                raise self.error(f"{where}.sampler", f"{tree['sampler']!r} is not one of {list(SAMPLERS)}"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
            out["sampler"] = tree["sampler"]
        return StageSampling(**out)

    def long(self, value, where: str):
        if value is None or isinstance(value, str):
            if value is not None and value not in MODES:
                raise self.error(where, f"{value!r} is not a long-video mode: {' or '.join(MODES)}")
            return value
        if not isinstance(value, dict) or value.get("mode") not in MODES:
            raise self.error(where, f"a mode ({' or '.join(MODES)}) or a mapping with mode: and its options; got "
                                    f"{value!r}")
        options = {k: v for k, v in self.mapping(value, LONG_KEYS[value["mode"]], where).items() if k != "mode"}
        try:
            return Autoregressive(**options) if value["mode"] == "autoregressive" else FIFO(**options)
        except ValueError as e:
            raise self.error(where, str(e)) from None

    def base(self, tree) -> Base:
        if isinstance(tree, str):
            tree = {"checkpoint": tree}
        tree = self.mapping(tree, BASE_KEYS, "base")
        if "checkpoint" not in tree:
            raise self.error("base", "give its checkpoint: base: CHECKPOINT, or base: {checkpoint: CHECKPOINT, ...}")
        return Base(self.path(tree["checkpoint"], "base.checkpoint"),
                    None if tree.get("num_frames") is None else self.integer(tree["num_frames"], "base.num_frames", 1),
                    self.long(tree.get("long"), "base.long"),
                    None if tree.get("fps") is None else self.number(tree["fps"], "base.fps"),
                    self.sampling(tree, "base"))

    def stage(self, tree, where: str) -> Stage:
        kinds = [k for k in ("upsample", "interpolate") if isinstance(tree, dict) and k in tree]
        if len(kinds) != 1:
            if isinstance(tree, dict) and not kinds:  # a misspelled kind reads as an unknown key
                self.mapping(tree, ("upsample", "interpolate", *UPSAMPLE_KEYS[1:], *INTERPOLATE_KEYS[1:]), where)
            raise self.error(where, "a stage is {upsample: CHECKPOINT, ...} or {interpolate: CHECKPOINT, ...}"
                             + (", not both" if len(kinds) == 2 else f"; got {tree!r}"))
        if kinds[0] == "upsample":
            t = self.mapping(tree, UPSAMPLE_KEYS, where)
            level = t.get("noise_level")
            chunk = t.get("chunk_frames")
            return Upsample(self.path(t["upsample"], f"{where}.upsample"),
                            None if level is None else self.integer(level, f"{where}.noise_level", 0),
                            None if chunk is None else self.integer(chunk, f"{where}.chunk_frames", 1),
                            self.integer(t.get("overlap", 0), f"{where}.overlap", 0), self.sampling(t, where))
        t = self.mapping(tree, INTERPOLATE_KEYS, where)
        factor = self.integer(t.get("factor", 4), f"{where}.factor")
        level = None if t.get("level") is None else self.integer(t["level"], f"{where}.level")
        try:
            levels_of(factor, level)
        except ValueError as e:
            raise self.error(where, str(e)) from None
        return Interpolate(self.path(t["interpolate"], f"{where}.interpolate"), factor, level,
                           self.number(t.get("context_guidance", 1.0), f"{where}.context_guidance"),
                           self.sampling(t, where))

    def cascade(self, tree) -> Cascade:
        tree = self.mapping(tree, TOP_KEYS, "")
        if "base" not in tree:
            raise self.error("base", "missing: a cascade starts from a base model (base: CHECKPOINT)")
        stages = tree.get("stages") or []
        if not isinstance(stages, list):
            raise self.error("stages", f"expected a list of stages, got {stages!r}")
        try:
            prompt = as_prompts(tree.get("prompt"), "prompt")
        except (TypeError, ValueError) as e:
            raise self.error("prompt", str(e)) from None
        try:
            labels = as_labels(tree.get("labels"))
        except (TypeError, ValueError) as e:
            raise self.error("labels", str(e)) from None
        negative = tree.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise self.error("negative_prompt", f"expected a string, got {negative!r}")
        num = tree.get("num_videos")
        return Cascade(self.base(tree["base"]), tuple(self.stage(s, f"stages[{i}]") for i, s in enumerate(stages)),
                       None if prompt is None else tuple(prompt), negative, None if labels is None else tuple(labels),
                       None if num is None else self.integer(num, "num_videos", 1),
                       self.integer(tree.get("seed", 0), "seed"), self.source)


def load_cascade(spec: Union[str, Path, dict, Cascade], root: Union[str, Path, None] = None) -> Cascade:
    """A cascade from a YAML file (relative paths against its folder), a mapping of the same keys (relative
    paths against ``root``, default the working directory), or a Cascade as it is. A ConfigError otherwise."""
    if isinstance(spec, Cascade):
        return spec
    if isinstance(spec, dict):
        return _Reader("(mapping)", Path(root or ".").absolute()).cascade(spec)
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"a cascade is a YAML file, a mapping or a Cascade, got {type(spec).__name__}")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"cascade {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        tree = yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"cascade {path}: not a text file (not UTF-8): give a YAML file") from None
    except Exception as e:  # yaml's errors span lines: the first says what and where
        raise ConfigError(f"cascade {path}: not valid YAML: {' '.join(str(e).split())}") from None
    return _Reader(str(path), path.parent.absolute()).cascade(tree)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class StagePlan:
    """One stage, checked against its checkpoint's config: what it makes and how many samples it takes."""

    name: str  # "base", "upsample", "interpolate"
    where: str  # "base", "stages[i]"
    checkpoint: Path  # the resolved checkpoint directory
    config: RunConfig
    frames: int  # the video's frames after this stage
    size: tuple[int, int]  # and its (H, W)
    pieces: int  # model samples (the base's call, chunks, windows): the progress bar's units


@dataclass(frozen=True)
class Plan:
    cascade: Cascade
    stages: tuple[StagePlan, ...]
    prompts: Optional[list[str]]  # one per video
    labels: Optional[list[int]]
    num_videos: int
    frame_rate: float  # the final video's: the base's times each interpolation factor


def override(cascade: Cascade, **values) -> Cascade:
    """``cascade`` with the call's arguments instead of the file's (None: the file's): prompt, negative_prompt,
    labels, num_videos, seed, and the base's num_frames and long."""
    c = cascade
    if values.get("prompt") is not None:
        c = dataclasses.replace(c, prompt=tuple(as_prompts(values["prompt"], "prompt")))
    if values.get("labels") is not None:
        c = dataclasses.replace(c, labels=tuple(as_labels(values["labels"])))
    if values.get("negative_prompt") is not None:
        c = dataclasses.replace(c, negative_prompt=values["negative_prompt"])
    if values.get("num_videos") is not None:
        c = dataclasses.replace(c, num_videos=checked_int("num_videos", values["num_videos"]))
    if values.get("seed") is not None:
        c = dataclasses.replace(c, seed=checked_int("seed", values["seed"], low=None))
    base = c.base
    if values.get("num_frames") is not None:
        base = dataclasses.replace(base, num_frames=checked_int("num_frames", values["num_frames"]))
    if values.get("long") is not None:
        base = dataclasses.replace(base, long=long_options(values["long"]))
    return dataclasses.replace(c, base=base)


def plan_cascade(cascade: Cascade) -> Plan:
    """Every check of the cascade against its checkpoints' configs, before any weights load (module docstring)."""
    where = [("base", cascade.base)] + [(f"stages[{i}]", s) for i, s in enumerate(cascade.stages)]
    configs = [_config(cascade, w, s.checkpoint) for w, s in where]
    base_cfg = configs[0][1]
    if base_cfg.conditions.low_res:
        raise _error(cascade, "base", "it is an upsampler (conditions.low_res): put it in stages as {upsample: ...}")
    prompts, labels, n = _videos(cascade, [c for _, c in configs])
    T = base_cfg.data.frames if cascade.base.num_frames is None else cascade.base.num_frames
    if cascade.base.long is not None and cascade.base.num_frames is None:
        raise _error(cascade, "base.long", "a long video needs base.num_frames, its length")
    size = (base_cfg.data.size, base_cfg.data.size)
    if cascade.base.fps is not None and not base_cfg.conditions.fps:
        raise _error(cascade, "base.fps", "this model is not conditioned on the frame rate (conditions.fps)")
    rate = cascade.base.fps or (default_fps(base_cfg.data) if base_cfg.conditions.fps else WRITE_FPS)
    plans = [StagePlan("base", "base", configs[0][0], base_cfg, T, size, 1)]
    _check_steps(cascade, "base", cascade.base.sampling, base_cfg)
    for (w, stage), (ckpt, cfg) in zip(where[1:], configs[1:]):
        _check_steps(cascade, w, stage.sampling, cfg)
        try:
            if isinstance(stage, Upsample):
                T, size, pieces = _plan_upsample(stage, cfg, T, size)
            else:
                T, size, pieces = _plan_interpolate(stage, cfg, T, size)
                rate *= stage.factor
        except ValueError as e:
            raise _error(cascade, w, str(e)) from None
        plans.append(StagePlan("upsample" if isinstance(stage, Upsample) else "interpolate", w, ckpt, cfg, T, size,
                               pieces))
    return Plan(cascade, tuple(plans), prompts, labels, n, rate)


def base_config(cascade: Cascade) -> RunConfig:
    """The base checkpoint's run config (no weights): what the command line reads to default the labels."""
    return _config(cascade, "base", cascade.base.checkpoint)[1]


def _error(cascade: Cascade, where: str, text: str) -> ConfigError:
    return ConfigError(f"cascade {cascade.source}: {where}: {text}")


def _config(cascade: Cascade, where: str, path: Path) -> tuple[Path, RunConfig]:
    try:
        ckpt = resolve_checkpoint(path)
        return ckpt, load_run_config(ckpt)
    except (ValueError, OSError) as e:
        raise _error(cascade, where, " ".join(str(e).split())) from None


def _videos(cascade: Cascade, configs: Sequence[RunConfig]) -> tuple[Optional[list[str]], Optional[list[int]], int]:
    """One prompt and one label per video (``num_videos`` of each); each model gets what it takes, and a model
    that needs one the cascade does not give is an error, as is one that no model takes."""
    prompt, labels, k = cascade.prompt, cascade.labels, cascade.num_videos or 1
    if prompt is not None and labels is not None and len(prompt) != len(labels):
        raise _error(cascade, "labels", f"{len(labels)} labels for {len(prompt)} prompts: give one per prompt")
    names = ["base"] + [f"stages[{i}]" for i in range(len(cascade.stages))]
    for name, cfg in zip(names, configs):
        if cfg.conditions.text_channels is not None and prompt is None:
            raise _error(cascade, name, "this model takes text: give a prompt (\"\" for an unconditional sample)")
        classes = cfg.conditions.num_classes
        if classes and labels is None:
            raise _error(cascade, name, f"this model is class-conditional: give labels (0..{classes - 1})")
        bad = [y for y in labels or () if classes and not (0 <= y < classes or y == -1)]
        if bad:
            raise _error(cascade, "labels", f"{bad[0]} is out of range for {name}, which has {classes} classes "
                                            f"(0..{classes - 1})")
    if prompt is not None and not any(c.conditions.text_channels is not None for c in configs):
        raise _error(cascade, "prompt", "no model of this cascade takes text: give labels or nothing")
    if labels is not None and not any(c.conditions.num_classes for c in configs):
        raise _error(cascade, "labels", "no model of this cascade is class-conditional: give a prompt or nothing")
    every = lambda values: None if values is None else [v for v in values for _ in range(k)]  # noqa: E731
    prompts, labels = every(prompt), every(labels)
    n = len(prompts) if prompts is not None else len(labels) if labels is not None else k
    return prompts, labels, n


def _check_steps(cascade: Cascade, where: str, sampling: StageSampling, cfg: RunConfig) -> None:
    """The stage's sampler and step count against its checkpoint's diffusion section, as the pipeline will check
    them (``Pipeline._check_schedule``) — here, before any stage has computed."""
    d, n = cfg.diffusion, cfg.diffusion.num_timesteps
    steps = sampling.steps if sampling.steps is not None else cfg.sample.steps
    sampler = sampling.sampler if sampling.sampler is not None else cfg.sample.sampler
    if steps > n:
        raise _error(cascade, f"{where}.steps", f"{steps} is more than the schedule's {n} timesteps")
    if sampler == "ddpm" and d.x0_scale is not None:
        raise _error(cascade, f"{where}.sampler", "ddpm has no step for this checkpoint's x0-scaled process "
                                                  "(diffusion.x0_scale): use ddim or dpm++2m")
    if d.steps_offset and (steps - 1) * (n // steps) + d.steps_offset >= n:
        raise _error(cascade, f"{where}.steps", f"{steps} steps with diffusion.steps_offset={d.steps_offset} go "
                                                f"past the schedule's last timestep ({n - 1}): take fewer")


def _plan_upsample(stage: Upsample, cfg: RunConfig, T: int, size: tuple[int, int]):
    c = cfg.conditions
    if not c.low_res:
        raise ValueError("this checkpoint is not an upsampler (it was trained without conditions.low_res): use it "
                         "as the base, or as {interpolate: ...} if it interpolates")
    if stage.noise_level is not None:
        if not c.noise_level:
            raise ValueError(f"noise_level={stage.noise_level}: this upsampler was trained without noise augmentation "
                             "(conditions.noise_level): leave noise_level out")
        n = cfg.diffusion.num_timesteps
        if stage.noise_level >= n:
            raise ValueError(f"noise_level={stage.noise_level} is not a timestep of its schedule: give 0 to {n - 1}")
    sf, tf = autoencoder_spatial_factor(cfg.autoencoder), autoencoder_temporal_factor(cfg.autoencoder)
    if size[0] % sf or size[1] % sf:
        raise ValueError(f"its autoencoder cannot encode the {size[0]}×{size[1]} video it gets (its spatial factor is "
                         f"{sf})")
    F = cfg.data.frames if stage.chunk_frames is None else stage.chunk_frames
    chunks = frame_chunks(T, F, stage.overlap)
    bad = sorted({ch.end - ch.start for ch in chunks if (ch.end - ch.start - 1) % tf})
    if bad:
        raise ValueError(f"its causal VAE takes 1 + {tf}k frames per chunk, not {bad[0]} (the video has {T} frames; "
                         f"chunks of {F})")
    f = c.low_res_factor
    return T, (size[0] * f, size[1] * f), len(chunks)


def _plan_interpolate(stage: Interpolate, cfg: RunConfig, T: int, size: tuple[int, int]):
    K = keyframes_in(cfg, autoencoder_temporal_factor(cfg.autoencoder))
    if T < 2:
        raise ValueError(f"interpolation needs at least 2 frames, and the video has {T}")
    sf = autoencoder_spatial_factor(cfg.autoencoder)
    if size[0] % sf or size[1] % sf:
        raise ValueError(f"its autoencoder cannot encode the {size[0]}×{size[1]} video it gets (spatial factor {sf})")
    return interpolated_frames(T, stage.factor), size, count_windows(T, stage.factor, K, stage.level)


# ---------------------------------------------------------------------------------------------- the run
@torch.no_grad()
def run_cascade(spec: Union[str, Path, dict, Cascade], *, prompt: Union[str, Sequence[str], None] = None,
                labels: Optional[Sequence[int]] = None, negative_prompt: Optional[str] = None,
                num_videos: Optional[int] = None, num_frames: Optional[int] = None, seed: Optional[int] = None,
                long=None, device=None, weights: str = "ema", progress: bool = False,
                on_stage: Optional[Callable[[int, StagePlan, torch.Tensor], None]] = None) -> torch.Tensor:
    """The cascade's videos ``(B, 3, T, H, W)`` in [-1, 1]: the base, then each stage (module docstring).

    The keyword arguments replace the file's values (None keeps them): ``num_frames`` and ``long`` are the base's
    (a long base video: ``long="autoregressive"`` / ``"fifo"`` / options, with ``num_frames``). ``on_stage(s,
    plan, video)`` sees each stage's output. ``progress``: one bar over the whole chain (every model sample).
    """
    cascade = override(load_cascade(spec), prompt=prompt, labels=labels, negative_prompt=negative_prompt,
                       num_videos=num_videos, num_frames=num_frames, seed=seed, long=long)
    check_seed(cascade.seed, 1)
    plan = plan_cascade(cascade)
    from tqdm.auto import tqdm

    video = None
    with tqdm(total=sum(p.pieces for p in plan.stages), unit="sample", disable=not progress) as bar:
        for index, (stage, sp) in enumerate(zip((cascade.base, *cascade.stages), plan.stages)):
            bar.set_description(f"cascade {sp.name} ({index + 1}/{len(plan.stages)})")
            pipe = load_pipeline(sp.checkpoint, weights=weights, device=device)
            video = _run_stage(pipe, stage, plan, index, video, bar)
            del pipe  # one model in memory at a time
            if on_stage is not None:
                on_stage(index, sp, video)
    return video


def _run_stage(pipe, stage: Any, plan: Plan, index: int, video: Optional[torch.Tensor], bar) -> torch.Tensor:
    """One stage on the video the one before made (the base: from noise)."""
    c, n = plan.cascade, plan.num_videos
    text = "text" in pipe.accepts
    conditions = dict(prompt=plan.prompts if text else None, labels=plan.labels if "labels" in pipe.accepts else None,
                      negative_prompt=c.negative_prompt if text else None)
    if isinstance(stage, Base):
        out = pipe(**conditions, num_videos=n, num_frames=plan.stages[0].frames, seed=c.seed, long=stage.long,
                   fps=stage.fps, **stage.sampling.kwargs())
        bar.update(1)
        return out
    seeds = [chunk_seed(c.seed + i, index) for i in range(n)]
    tick = lambda *_: bar.update(1)  # noqa: E731
    if isinstance(stage, Upsample):
        return upsample(pipe, video, noise_level=stage.noise_level, chunk_frames=stage.chunk_frames,
                        overlap=stage.overlap, seed=seeds, on_chunk=tick, **conditions, **stage.sampling.kwargs())
    return interpolate(pipe, video, factor=stage.factor, level=stage.level, context_guidance=stage.context_guidance,
                       seed=seeds, on_window=tick, **conditions, **stage.sampling.kwargs())
