"""The arguments of a generation call, checked before any compute, and the warnings about them.

Every numeric argument is a number of the right kind and range (NaN guidance is an error, not a
NaN video); prompts, labels and given frames come in the forms the pipeline documents. A wrong
type is a TypeError, a bad value a ValueError, each naming the argument and what to pass. A
warning is one line, attributed to the caller's line (not to moviola or torch).
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from moviola.diffusion.samplers import SAMPLERS

READS_ETA = frozenset({"ddim"})  # diffusion/samplers.py: only _ddim reads eta; ddpm and dpm++2m ignore it


@dataclass(frozen=True)
class Sampling:
    """A call's sampling arguments, checked: what each clip of a long video is denoised with. ``steps`` None is
    the method's default (``sample.steps`` for a clip; FIFO-Diffusion ties its steps to its queue)."""

    sampler: str
    steps: Optional[int]
    eta: float
    scale: float  # cfg
    context_guidance: float = 1.0
    temporal_guidance: float = 0.0


def given_frames(image, frames) -> dict[int, list]:
    """``image`` (frame 0) and ``frames`` as one mapping: frame index -> list of images (one, or one per video)."""
    out: dict[int, list] = {}
    if image is not None:
        images = [image] if isinstance(image, (str, Path, torch.Tensor)) else list(image)
        if not images:
            raise ValueError("the image list is empty")
        out[0] = images
    for index, value in (frames or {}).items():
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise ValueError(f"frames maps frame indices (int) to images; got the key {index!r}")
        index = int(index)
        if index in out:
            raise ValueError(f"frame {index} is given twice (image= is frame 0)")
        images = [value] if isinstance(value, (str, Path, torch.Tensor)) else list(value)
        if not images:
            raise ValueError(f"no image for frame {index}")
        out[index] = images
    return out


def count_videos(prompt, labels, given: dict, num_videos: Optional[int]) -> int:
    """How many videos a call makes: one per prompt or label, else num_videos (or one per given image)."""
    if prompt is not None:
        return len(prompt)
    if labels is not None:
        n = len(labels)
    else:
        widest = max((len(v) for v in given.values()), default=0)
        n = widest if given and num_videos is None else (num_videos or 1)
    if n <= 0:
        raise ValueError("nothing to generate: give at least one label or num_videos >= 1")
    return n


def checked_int(name: str, value, low: Optional[int] = 1, high: Optional[int] = None, what: str = "") -> int:
    """``value`` as an int (numpy ints too, bools not), ``low``..``high`` when given: TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    span = "" if high is None else f"from {low} to {high}{what}"
    if low is not None and value < low:
        pos = "positive" if low == 1 else f"at least {low}"
        raise ValueError(f"{name} must be {pos}{f' (an int {span})' if span else ''}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int {span}, got {value}")
    return value


def checked_real(name: str, value, low: Optional[float] = None) -> float:
    """``value`` as a finite float (numpy floats and ints too, bools not), ``>= low`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be {low:g} or more, got {value:g}")
    return value


def checked_fps(value) -> float:
    """A frame rate: a finite number above 0 (numpy numbers too, bools not): TypeError / ValueError naming fps."""
    value = checked_real("fps", value)
    if value <= 0:
        raise ValueError(f"fps must be a positive number (frames per second), got {value:g}")
    return value


def check_sampling(num_timesteps: int, scale, sampler, steps, eta, planned: bool = False) -> tuple[float, int, float]:
    """The sampling arguments, checked: a known sampler, a finite guidance scale, steps in 1..num_timesteps
    (not checked with a plan, which sets the steps), eta finite and >= 0."""
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a name, one of {list(SAMPLERS)}; got {sampler!r} ({type(sampler).__name__})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: pass one of {list(SAMPLERS)}")
    scale = checked_real("cfg", scale)
    if not planned:
        steps = checked_int("steps", steps, high=num_timesteps, what=" (the schedule's timesteps)")
    return scale, steps, checked_real("eta", eta, low=0)


def sampling_for(pipe, steps=None, sampler=None, cfg=None, eta=None, context_guidance=1.0,
                 temporal_guidance=0.0) -> Sampling:
    """A call's sampling arguments against ``pipe`` (its ``sample:`` section fills what is None), checked as
    ``pipe(...)`` checks them: what each window or chunk of an interpolation or an upsampling is denoised with."""
    c = pipe.config.sample
    sampler = c.sampler if sampler is None else sampler
    scale, steps, eta = check_sampling(pipe.schedule.num_timesteps, c.cfg if cfg is None else cfg, sampler,
                                       c.steps if steps is None else steps, c.eta if eta is None else eta)
    context_guidance = checked_real("context_guidance", context_guidance)
    temporal_guidance = pipe._checked_temporal_guidance(temporal_guidance)
    pipe._check_schedule(sampler, steps)
    return Sampling(sampler, steps, eta, scale, context_guidance, temporal_guidance)


def video_tensor(video, name: str) -> torch.Tensor:
    """A video argument as ``(B, 3, T, H, W)`` float in [-1, 1] on the CPU: a video file (read whole), or a tensor
    ``(B, 3, T, H, W)`` / ``(3, T, H, W)`` in [-1, 1]. A TypeError / ValueError naming ``name`` otherwise."""
    from moviola.video import from_uint8, read_video

    if isinstance(video, (str, Path)):
        if not Path(video).is_file():
            raise ValueError(f"{name}={str(video)!r}: no such video file")
        return from_uint8(read_video(video))[None]  # (1, 3, T, H, W)
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"{name} must be a video file path or a (B, 3, T, H, W) tensor in [-1, 1], got "
                        f"{type(video).__name__}")
    if not video.is_floating_point() or (video.numel() and not bool(torch.isfinite(video).all())):
        raise ValueError(f"a {name} tensor must be float and finite (got {video.dtype}"
                         f"{'' if video.is_floating_point() else ': uint8 videos: x / 127.5 - 1'})")
    if video.numel() and (video.min() < -1.001 or video.max() > 1.001):
        raise ValueError(f"a {name} tensor must be in [-1, 1], got [{float(video.min()):.3g}, {float(video.max()):.3g}] "
                         "([0, 1] videos: 2x - 1)")
    frames = video.detach().float().cpu()
    frames = frames[None] if frames.dim() == 4 else frames
    if frames.dim() != 5 or frames.shape[1] != 3 or 0 in frames.shape:
        raise ValueError(f"a {name} tensor must be (B, 3, T, H, W) or (3, T, H, W), got shape {tuple(video.shape)}")
    return frames.clamp(-1, 1)


def seeds_of(seed, n: int) -> list[int]:
    """One generator seed per video: ``seed + i`` for an int, or a list of n ints as they are."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"{len(seed)} seeds for {n} videos: give one seed (video i uses seed + i) or one per video")
        return [check_seed(s, 1) for s in seed]
    seed = check_seed(seed, n)
    return [seed + i for i in range(n)]


def check_seed(seed, n: int) -> int:
    """A generator seed for each of n videos (seed + i): an int within torch's 64-bit seed range."""
    seed = checked_int("seed", seed, low=None)
    if not -2 ** 63 <= seed <= 2 ** 64 - n:
        raise ValueError(f"seed must be an int from -2**63 to 2**64 - {n} (video i uses seed + i), got {seed}")
    return seed


def as_prompts(prompt, name: str) -> Optional[list[str]]:
    """A prompt or a list of them as a list of strings (None stays None)."""
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (bytes, numbers.Number, torch.Tensor)) or not hasattr(prompt, "__iter__"):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = list(prompt)
    if not prompts:
        raise ValueError(f"the {name} list is empty: give at least one {name}")
    bad = next((p for p in prompts if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must be strings, got {bad!r} ({type(bad).__name__})")
    return prompts


def as_labels(labels) -> Optional[list[int]]:
    """Class labels (one int, a list, a numpy array or a tensor of ints) as a list of ints (None stays None)."""
    if labels is None:
        return None
    if hasattr(labels, "tolist") and not isinstance(labels, (list, tuple)):  # a numpy array or number, a tensor
        labels = labels.tolist()  # a 0-d one: a number
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        labels = [labels]
    elif isinstance(labels, (str, bytes, bool)) or not hasattr(labels, "__iter__"):
        raise TypeError(f"labels must be a list of class indices (ints), one per video, e.g. [3, 17]; got {labels!r}")
    out = []
    for y in labels:
        if isinstance(y, bool) or not isinstance(y, numbers.Integral):
            raise TypeError(f"labels must be ints (class indices, -1 for none), got {y!r} ({type(y).__name__})")
        out.append(int(y))
    return out


_NO_GRAD_WRAPPER = os.path.join("torch", "utils", "_contextlib.py")
_OWN_FILES = {__file__, *(os.path.join(os.path.dirname(__file__), name)  # the pipeline's own frames
                          for name in ("base.py", "long_video.py", "fifo.py", "interpolate.py", "upsample.py",
                                       "cascade.py"))}


def warn(message: str) -> None:
    """A one-line UserWarning, attributed to the first caller outside this module (and torch's no_grad wrapper)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename in _OWN_FILES
                                 or frame.f_code.co_filename.endswith(_NO_GRAD_WRAPPER)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
