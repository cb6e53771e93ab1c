"""Generation in three steps: ``conditions()`` → ``denoise()`` → ``decode()``, behind one call.

``pipe(labels=[3, 17], num_frames=16, steps=50, cfg=4, seed=0)`` (class-conditional) or
``pipe(prompt=["a red circle moving right"], negative_prompt="...", image=first_frame)``
(text and image conditioned) returns videos ``(B, C, T, H, W)`` in [-1, 1]. The three steps are
public so that long-video, FIFO and cascade pipelines reuse them instead of copying this loop:

- ``conditions(...)`` turns prompts, labels and given frames into a ``Conditioning`` and the null
  one guidance compares against (a ``Conditions`` record);
- ``denoise(conds, x_T, ...)`` runs a sampler from noise to a latent under classifier-free guidance;
- ``decode(z, conds)`` puts the given latent frames back exactly and decodes to pixels.

Guidance compares against the null condition: the empty prompt "" for text (or the negative
prompt, when one is given), the null class for labels. Given frames stay in the unconditional
branch when there is a prompt or a class to guide on, and are nulled ("no frame given") only when
they are the sole condition.

Context guidance (Video LDM, Blattmann et al. 2023) guides on the given frames with its own scale
``context_guidance`` = s: the model output is ``f_cfg + (s − 1)·(f(c, S) − f(c, ∅_S))``, ``f_cfg``
being the classifier-free guided output above, ``f(c, S)`` the conditional branch with the frames
and ``f(c, ∅_S)`` the same condition with the frames dropped (context and mask zeros, as training's
``context_dropout``). It costs one more model evaluation per step, in the same batch, and none at
s = 1, which gives exactly the output without it. When the frames are the sole condition the
unconditional branch is ``f(∅_S)`` already, so the two guidances add: one guided pair at scale
``cfg + s − 1``. The paper uses s ≥ 1; any finite s is taken, as for ``cfg`` (s < 1 weakens the
frames' pull; at ``cfg=1``, s = 0 gives the output with the frames dropped).

Temporal guidance (VideoCrafter's ``unconditional_guidance_scale_temporal``) with weight ``temporal_guidance`` = s
adds ``s·(f(c) − f(c, no temporal attention))`` to the guided output: the conditional branch evaluated once more
with the model's temporal attention layers skipped (their input passes through; temporal convolutions and every
other layer run). s is an additive weight as in the official code: 0 (the default) is none and costs nothing; any
finite s is taken. It is one more branch in the same batch, for a model that can skip its temporal attention
(``model.supports_temporal_guidance``: VideoCrafter); asking another model for it is a ValueError. Unlike the
official sampler, which adds it only inside its classifier-free-guidance branch, it applies at ``cfg=1`` too.

The diffusion section's sampling keys apply to every call: ``diffusion.timestep_spacing`` and ``steps_offset``
(which timesteps the steps visit), ``final_alpha`` (where the last step lands) and ``x0_scale`` (VideoCrafter's
``use_scale``, mirrored by the ddim and dpm++2m samplers; ddpm is refused with it).

Image tokens (a VideoCrafter model with ``model.image_encoder: tokens``, trained with ``conditions.image``):
``image=`` (frame 0) is also encoded by the run's frozen image encoder (``image.encoder``, a local CLIP vision
model: conditioning/image.py), as training encoded each clip's frame 0 — the image first resized and cropped to the
video's frame, as for the context frame — into ``image_tokens``; the null branch of guidance gets all-zero tokens
(the null image, training's ``conditions.image_dropout``), the conditional branch of context guidance keeps them.
Such a model without context frames takes frame 0 only; without ``image=`` it gets no image (the text-only
model). The encoder loads on first use (``load_pipeline`` checks its directory and token width at once).

Given frames (a model with context frames): ``image=`` is frame 0 (image-to-video); ``frames=``
maps any frame index to an image (prediction from a first frame, interpolation between the ends,
any keyframes). An image is resized to cover the frame size keeping its aspect ratio, then
centre-cropped (the rule of the training data, ``data/transforms.resize_and_crop``); encoded, it is
the context latent of its frame. With a causal VAE, whose latent frames after the first each cover
several frames, only frame 0 can be given alone. Video ``i`` of a call starts from the noise of
seed ``seed + i`` and draws every later noise (DDPM, DDIM with eta > 0) from its own generator, so
a video is a pure function of its seed and its condition, whatever the batch it was made in.

The frame rate (a model trained with ``conditions.fps``, VideoCrafter's ``fps_cond``): ``fps=F`` is the
condition of every video of the call (a clip at stride s trained at ``data.fps / s``, so a lower F asks
for faster motion per frame) and the rate to play the videos at, which ``frame_rate(F)`` reports for
writing them (``moviola sample --fps`` sets both). The default is the training data's native rate,
``data.fps / data.frame_strides[0]`` (``data.fps / data.frame_stride`` with one stride). The frame rate
is not a guidance target: both branches of guidance get it. A model trained without it takes no
``fps`` (a ValueError, as labels for a model without classes); its videos have no rate of their own,
and ``frame_rate()`` is 8, the Moving Shapes files' rate and ``save_video``'s default.

The upsampler (a model trained with ``conditions.low_res``: Video LDM's temporally aligned upsampler, W.A.L.T's
latent super-resolution): ``low_res=VIDEO`` is the video to upsample, a pixel tensor ``(B or 1, 3, T, h, w)``
(or ``(3, T, h, w)``) in [-1, 1] or a video file. It is encoded by the pipeline's autoencoder, as training
encoded the area-downsampled clips, and the output has its T frames at ``conditions.low_res_factor`` × its size
(``num_frames``, ``height`` and ``width`` may be given only if they agree). A model trained with
``conditions.noise_level`` gets the latent noised to ``noise_level=N`` (default ``sample.noise_level``) by the
training formula ``sqrt(ᾱ_N) z + sqrt(1 − ᾱ_N) ε`` (N = 0: z itself) and is told N; ε of video ``i`` is drawn from
its generator (seed ``seed + i``) right after its start noise, so the result is a pure function of the seed too.
``conditions()`` gives the clean latent and N; ``noise_low_res(conds, generators)`` noises it (``__call__``
does, per batch). The low-resolution video and N are not guidance targets: both branches get them. A model
without the condition takes no ``low_res`` (ValueError), an upsampler needs one (ValueError); an N above
``conditions.noise_level_max`` (the levels trained on) runs, with a warning.

Arguments are checked before anything is encoded or sampled: a wrong type is a TypeError, a value
out of range (a NaN or infinite ``cfg``, ``context_guidance`` or ``temporal_guidance``, a negative ``eta``, ``steps``
outside 1..num_timesteps, a frame count, size, ``num_videos`` or ``batch_size`` below 1, an unknown
sampler) a ValueError naming the argument. Any finite ``cfg`` is allowed (negative guidance included),
and any finite ``context_guidance``; numpy numbers are
taken for ints and floats, bools are not. A request the model cannot serve well runs, with one
``UserWarning``: more frames than it was trained on (fewer are not warned about: every position
was seen in training) or any other frame size; an ``fps`` outside the rates it was trained on; ``eta`` with a sampler that does not read it (only
DDIM does); ``cfg`` with nothing to guide on; ``context_guidance`` other than 1 with no frame
given; a negative prompt at ``cfg=1``; and, for a text model
trained on Moving Shapes, a prompt with no word of that vocabulary (the empty prompt is
unconditional and never warned about).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from moviola.autoencoders import Autoencoder
from moviola.conditioning import Conditioning
from moviola.conditioning.image import build_image
from moviola.conditioning.text import build_text
from moviola.config import ConfigError, RunConfig
from moviola.diffusion import NoiseSchedule, guided_model_fn, sample
from moviola.diffusion.samplers import NO_SCALED_DDPM
from moviola.diffusion.schedule import randn
from moviola.pipelines.inputs import (READS_ETA, Sampling, as_labels, as_prompts, check_sampling, check_seed,
                                      count_videos, given_frames, checked_fps, checked_int, checked_real, warn)

VideoLike = Union[str, Path, torch.Tensor]
from moviola.utils import resolve_device

ImageLike = Union[str, Path, torch.Tensor]
WRITE_FPS = 8.0  # the rate videos of a model without the fps condition are written at (Moving Shapes' files)
UNGUIDED = ("fps", "low_res", "noise_level")  # conditions that are no guidance target: every branch keeps them
# what to do when a checkpoint's image encoder (image.encoder) is not set or not on this machine
IMAGE_ENCODER_HINT = ("give the CLIP vision directory this model was trained with: load_pipeline(..., image_encoder=DIR), "
                      "or set image.encoder in the checkpoint's config.json")


@dataclass
class Conditions:
    """What ``conditions()`` returns: the batch's condition, its null, and whether there is anything to guide on."""

    cond: Conditioning
    uncond: Conditioning
    guided: bool

    def index(self, idx: Sequence[int]) -> "Conditions":
        return Conditions(self.cond.index(idx), self.uncond.index(idx), self.guided)


class Pipeline:
    def __init__(self, model: torch.nn.Module, autoencoder: Autoencoder, schedule: NoiseSchedule,
                 config: RunConfig, device: Union[str, torch.device, None] = None, text=None, image_encoder=None):
        self.device = resolve_device("auto" if device is None else device)
        self.model = model.to(self.device).eval()
        self.autoencoder = autoencoder.to(self.device).eval()
        self.schedule = schedule
        self.config = config
        self._text = text  # a TextEmbedder; built from the config on first use when None
        self._image_encoder = image_encoder  # a CLIPImageEncoder (image tokens); likewise

    @property
    def accepts(self) -> frozenset:
        return getattr(self.model, "accepts", frozenset())

    def frame_rate(self, fps: Optional[float] = None) -> float:
        """The frame rate to play (write) the videos of ``pipe(..., fps=fps)`` at: for a model conditioned on
        the frame rate, ``fps``, by default the training data's native rate (:func:`default_fps`); for
        another model, ``fps`` if given (only a file's rate then), else 8."""
        from moviola.data.strides import default_fps

        fps = None if fps is None else checked_fps(fps)
        if fps is not None:
            return fps
        return default_fps(self.config.data) if "fps" in self.accepts else WRITE_FPS

    @property
    def text(self):
        if self._text is None:
            self._text = build_text(self.config, self.device)
        return self._text

    @property
    def image_encoder(self):
        """The frozen image encoder of a model that reads image tokens (``image.encoder``), loaded on first use."""
        if self._image_encoder is None:
            try:
                self._image_encoder = build_image(self.config, self.device)
            except ConfigError as e:
                raise ConfigError(f"{e}; {IMAGE_ENCODER_HINT}") from None
        return self._image_encoder

    # ---------------------------------------------------------------- step 1: conditions
    def conditions(self, n: int, num_frames: int, height: int, width: int, labels: Optional[Sequence[int]] = None,
                   prompt: Optional[Sequence[str]] = None, negative_prompt: Union[str, Sequence[str], None] = None,
                   frames: Optional[Mapping[int, Sequence[ImageLike]]] = None,
                   fps: Optional[float] = None, low_res: Optional[VideoLike] = None,
                   noise_level: Optional[int] = None) -> Conditions:
        """The condition of ``n`` videos of ``num_frames`` frames of ``height × width``, and its null.

        ``frames`` maps a pixel frame index to one image, or one per video. ``fps``: the frame rate of a
        model conditioned on it (default :meth:`frame_rate`), in both the condition and its null.
        ``low_res``: an upsampler's low-resolution video (one, or one per video), which the frame count and size
        must match (:meth:`upsampled_size`); the condition holds its clean latent and ``noise_level`` (default
        ``sample.noise_level``), which :meth:`noise_low_res` applies. Every check happens here, before any sampling.
        """
        n, num_frames = checked_int("n", n), checked_int("num_frames", num_frames)
        height, width = checked_int("height", height), checked_int("width", width)
        low = self.prepare_low_res(low_res)  # checked early: a model that takes none, or needs one
        level = self._checked_noise_level(noise_level)
        if low is not None:
            if low.shape[0] not in (1, n):
                raise ValueError(f"{low.shape[0]} low-resolution videos for {n} videos: give one, or one per video")
            self.upsampled_size(low, num_frames, height, width)  # the frame count and size must agree
        prompt, labels, frames = as_prompts(prompt, "prompt"), as_labels(labels), given_frames(None, frames)
        for name, values in (("prompts", prompt), ("labels", labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} videos: give one per video")
        rate = self._fps_conditioning(fps, n)  # checked first: it needs no encoder
        parts: list[tuple[Conditioning, Conditioning]] = []
        if prompt is not None and "text" not in self.accepts:  # before "pass labels": say what is wrong first
            raise ValueError("this model does not take text: do not pass a prompt"
                             + (" (it is class-conditional: pass labels)" if "labels" in self.accepts else ""))
        if labels is not None:
            parts.append(self._label_conditioning(labels))
        elif "labels" in self.accepts:
            raise ValueError(f"this model is class-conditional: pass labels (0..{self.config.conditions.num_classes - 1})")
        if prompt is not None:
            parts.append(self._text_conditioning(prompt, negative_prompt))
        elif "text" in self.accepts:
            raise ValueError("this is a text-to-video model: pass a prompt (\"\" for an unconditional sample)")
        elif negative_prompt is not None:
            raise ValueError("a negative prompt needs a prompt")
        tokens = None
        if frames and "image_tokens" in self.accepts:  # checked (and the encoder loaded) before the frames encode
            tokens = self._image_token_conditioning(frames, n, num_frames, height, width)
        if frames and ("context" in self.accepts or tokens is None):
            given, given_null = self._frame_conditioning(frames, n, num_frames, height, width)
            # with a prompt or a class, guidance is on those and the unconditional branch keeps the frames
            # (trained whenever the caption or class is dropped and the frames are not: p·(1 − p_ctx) of
            # the batches, against p·p_ctx for nulling both); with nothing else, guidance is on the frames
            parts.append((given, given if parts else given_null))
        if tokens is not None:  # frame 0's image tokens; the null branch gets zeros (the null image)
            parts.append(tokens)
        cond, uncond = _merge([p[0] for p in parts]), _merge([p[1] for p in parts])
        if rate is not None:  # not a guidance target: the null keeps it (Conditioning.null)
            cond.fps, uncond.fps = rate, rate.clone()
        if low is not None:  # nor is the low-resolution video: both branches get it, and its level
            z = self._encode_low_res(low).expand(n, -1, -1, -1, -1)
            cond.low_res, uncond.low_res = z.clone(), z.clone()
            if level is not None:
                cond.noise_level, uncond.noise_level = (torch.full((n,), float(level)) for _ in range(2))
        return Conditions(cond, uncond, bool(parts))

    # ---------------------------------------------------------------- the upsampler's input
    def prepare_low_res(self, video: Optional[VideoLike]) -> Optional[torch.Tensor]:
        """An upsampler's low-resolution video as ``(m, 3, T, h, w)`` float in [-1, 1]: a video file (read whole), or
        a tensor ``(m, 3, T, h, w)`` / ``(3, T, h, w)`` in [-1, 1]; None for none. Refused for a model that takes
        no low-resolution video, and None refused for one that needs it."""
        from moviola.video import from_uint8, read_video

        if video is None:
            if "low_res" in self.accepts:
                raise ValueError("this model is an upsampler (conditions.low_res): pass low_res= the video to upsample "
                                 "(a (B, 3, T, h, w) tensor in [-1, 1] or a video file)")
            return None
        if "low_res" not in self.accepts:
            raise ValueError("low_res: this model is not an upsampler (it was trained without conditions.low_res): "
                             "do not pass low_res")
        if isinstance(video, (str, Path)):
            if not Path(video).is_file():
                raise ValueError(f"low_res={str(video)!r}: no such video file")
            return from_uint8(read_video(video))[None]  # (1, 3, T, h, w)
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"low_res must be a video file path or a (B, 3, T, h, w) tensor in [-1, 1], got "
                            f"{type(video).__name__}")
        if video.is_floating_point() and not bool(torch.isfinite(video).all()):
            raise ValueError("a low_res tensor must be finite (it holds NaN or inf values)")
        if not video.is_floating_point() or video.numel() and (video.min() < -1.001 or video.max() > 1.001):
            raise ValueError("a low_res tensor must be float in [-1, 1] (got "
                             f"{video.dtype}{'' if not video.numel() else f' in [{float(video.min()):.3g}, {float(video.max()):.3g}]'}); "
                             "uint8 or [0, 1] videos: x / 127.5 - 1 or 2x - 1")
        frames = video.detach().float().cpu()
        frames = frames[None] if frames.dim() == 4 else frames
        if frames.dim() != 5 or frames.shape[1] != 3 or 0 in frames.shape:
            raise ValueError(f"a low_res tensor must be (B, 3, T, h, w) or (3, T, h, w), got shape "
                             f"{tuple(video.shape)}")
        return frames.clamp(-1, 1)

    def upsampled_size(self, low: torch.Tensor, num_frames: Optional[int] = None, height: Optional[int] = None,
                       width: Optional[int] = None) -> tuple[int, int, int]:
        """(T, H, W) of the upsampled videos of ``low`` (m, 3, T, h, w): its frames at conditions.low_res_factor × its
        size. A given ``num_frames``, ``height`` or ``width`` must agree (ValueError naming it)."""
        f = self.config.conditions.low_res_factor
        T, h, w = low.shape[2:]
        try:
            self.autoencoder.latent_shape(T, h, w)
        except ValueError as e:
            raise ValueError(f"low_res: the low-resolution video cannot be encoded: {e}") from None
        for name, value, want in (("num_frames", num_frames, T), ("height", height, f * h), ("width", width, f * w)):
            if value is not None and checked_int(name, value) != want:
                raise ValueError(f"{name}={value} disagrees with low_res: {T} frames of {h}×{w} upsample ×{f} to {T} "
                                 f"frames of {f * h}×{f * w}; leave {name} out")
        return T, f * h, f * w

    def _checked_noise_level(self, level) -> Optional[int]:
        """The noise-augmentation level of the low-resolution input: an int timestep, default sample.noise_level; None
        for a model trained without conditions.noise_level (which takes none)."""
        if "noise_level" not in self.accepts:
            if level is not None:
                raise ValueError(f"noise_level={level!r}: this model was trained without noise augmentation "
                                 "(conditions.noise_level): do not pass noise_level (it upsamples the clean "
                                 "low-resolution latent)")
            return None
        n = self.schedule.num_timesteps
        level = self.config.sample.noise_level if level is None else level
        level = checked_int("noise_level", level, low=0, high=n - 1, what=" (a timestep of the schedule)")
        trained = self.config.conditions.noise_level_max
        if level > trained:
            warn(f"noise_level={level} is above the levels this model was trained on (0 to {trained}, "
                 "conditions.noise_level_max): how it uses so noisy a low-resolution video is a guess")
        return level

    @torch.no_grad()
    def _encode_low_res(self, low: torch.Tensor) -> torch.Tensor:
        """The clean low-resolution latent (m, c, t, h', w') of pixels (m, 3, T, h, w), as training encoded them."""
        return self.autoencoder.encode(low.to(self.device)).float().cpu()

    def noise_low_res(self, conds: Conditions, generators: Sequence[torch.Generator]) -> Conditions:
        """``conds`` with its low-resolution latent noised to its level (the training augmentation, diffusion/
        schedule.py ``augment``), ε of video i from ``generators[i]``; unchanged without a level."""
        low, level = conds.cond.low_res, conds.cond.noise_level
        if low is None or level is None:
            return conds
        eps = randn(low.shape, generator=list(generators))
        noised = self.schedule.augment(low, level, eps.to(low.dtype))
        return Conditions(dataclasses.replace(conds.cond, low_res=noised),
                          dataclasses.replace(conds.uncond, low_res=noised.clone()), conds.guided)

    def _fps_conditioning(self, fps, n: int) -> Optional[torch.Tensor]:
        """(n,) float32 frame rates for a model conditioned on it, None for another; fps for one is an error."""
        if "fps" not in self.accepts:
            if fps is not None:
                raise ValueError(f"fps={fps!r}: this model is not conditioned on the frame rate (it was trained "
                                 "without conditions.fps): do not pass fps (the rate a file plays at is save_video's fps)")
            return None
        rate = self.frame_rate(fps)
        self._warn_untrained_rate(rate)
        return torch.full((n,), rate, dtype=torch.float32)

    def _warn_untrained_rate(self, rate: float) -> None:
        """An fps outside the range of the rates the model was trained on runs, with a warning."""
        from moviola.data.strides import clip_fps, strides_of

        trained = sorted({clip_fps(self.config.data, s) for s in strides_of(self.config.data)})
        if trained[0] - 1e-6 <= rate <= trained[-1] + 1e-6:
            return
        shown = ", ".join(f"{r:g}" for r in trained)
        warn(f"fps={rate:g} is outside the frame rates this model was trained on ({shown}: data.fps / "
             "data.frame_strides): its motion at that rate is a guess")

    def _text_conditioning(self, prompt: Sequence[str], negative_prompt) -> tuple[Conditioning, Conditioning]:
        prompt = as_prompts(prompt, "prompt")
        n = len(prompt)
        if negative_prompt is None:
            negative = [""] * n
        elif isinstance(negative_prompt, str):
            negative = [negative_prompt] * n
        else:
            negative = as_prompts(negative_prompt, "negative_prompt")
            if len(negative) != n:
                raise ValueError(f"{len(negative)} negative prompts for {n} prompts: give one, or one per prompt")
        self._warn_unknown_words(prompt)
        emb, mask = self.text(list(prompt))
        null_emb, null_mask = self.text(negative)
        return Conditioning(text=emb, text_mask=mask), Conditioning(text=null_emb, text_mask=null_mask)

    def _warn_unknown_words(self, prompts: Sequence[str]) -> None:
        """A text model trained on Moving Shapes knows only its captions' words: a prompt with none of them
        (other than the empty, unconditional one) gets one warning per call, listing the vocabulary."""
        if self.config.data.dataset != "shapes":
            return
        from moviola.data.shapes import COLOURS, DIRECTIONS, SHAPES

        known = {*COLOURS, *SHAPES, *DIRECTIONS}
        unknown = list(dict.fromkeys(p for p in prompts
                                     if p.strip() and not known & set(re.findall(r"[a-z]+", p.lower()))))
        if not unknown:
            return
        shown = ", ".join(repr(p if len(p) <= 60 else p[:60] + "…") for p in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        grammar = f"a {{{'|'.join(COLOURS)}}} {{{'|'.join(SHAPES)}}} moving {{{'|'.join(DIRECTIONS)}}}"
        warn(f"no word this Moving Shapes model knows in the prompt{'s' if len(unknown) > 1 else ''} {shown}{more}: "
              f"it was trained only on captions \"{grammar}\", so what it draws is arbitrary")

    def _label_conditioning(self, labels: Sequence[int]) -> tuple[Conditioning, Conditioning]:
        if "labels" not in self.accepts:
            raise ValueError("this model is not class-conditional: do not pass labels"
                             + (" (it takes text: pass a prompt)" if "text" in self.accepts else ""))
        num_classes = self.config.conditions.num_classes
        labels = as_labels(labels)
        bad = [y for y in labels if not (0 <= y < num_classes or y == -1)]
        if bad:
            raise ValueError(f"labels {bad} out of range: this model has {num_classes} classes (0..{num_classes - 1})")
        cond = Conditioning(labels=torch.tensor(labels, dtype=torch.long))
        return cond, cond.null(["labels"])

    def prepare_image(self, image: ImageLike, height: int, width: int) -> torch.Tensor:
        """A frame as ``(3, H, W)`` in [-1, 1]: a file (image, or a video's first frame) or a
        tensor ``(3, H', W')`` in [-1, 1]; resized to cover ``H×W`` keeping its aspect, centre-cropped."""
        from moviola.data.transforms import resize_and_crop
        from moviola.video import from_uint8, read_image

        if isinstance(image, (str, Path)):
            frame = from_uint8(read_image(image)[None])[:, 0]  # (3, H', W')
        elif isinstance(image, torch.Tensor):
            if not image.is_floating_point() or image.numel() and (image.min() < -1.001 or image.max() > 1.001):
                raise ValueError("an image tensor must be float in [-1, 1] (got "
                                 f"{image.dtype}{'' if not image.numel() else f' in [{float(image.min()):.3g}, {float(image.max()):.3g}]'}); "
                                 "uint8 or [0, 1] images: x / 127.5 - 1 or 2x - 1")
            frame = image.float()
            if frame.dim() == 4 and frame.shape[1] == 1:  # (3, 1, H, W): a one-frame video
                frame = frame[:, 0]
            if frame.dim() != 3 or frame.shape[0] != 3:
                raise ValueError(f"an image tensor must be (3, H, W) in [-1, 1], got shape {tuple(frame.shape)}")
        else:
            raise TypeError(f"image must be a file path or a (3, H, W) tensor, got {type(image).__name__}")
        return resize_and_crop(frame[:, None], (height, width))[:, 0].clamp(-1, 1)  # (3, H, W)

    def _image_token_conditioning(self, frames: Mapping[int, Sequence[ImageLike]], n: int, num_frames: int, H: int,
                                  W: int) -> Optional[tuple[Conditioning, Conditioning]]:
        """The image encoder's tokens of the given frame 0 (n, N, D), as training encoded each clip's frame 0 at the
        frame size, and zeros for the null; None when frame 0 is not given (no image: the null image)."""
        first = [index for index in frames if index % num_frames == 0 and -num_frames <= index < num_frames]
        if "context" not in self.accepts:  # the tokens are its only way to take a frame: frame 0 alone
            other = [index for index in frames if index not in first]
            if other:
                raise ValueError(f"this model takes the first frame only (image=, as its image tokens; it was trained "
                                 f"without context frames: conditions.context_frames), got frame {other[0]}")
        if not first:
            return None
        if len(first) > 1:
            raise ValueError(f"frame 0 is given twice (as {first[0]} and {first[1]}; image= is frame 0)")
        images = frames[first[0]]
        if len(images) not in (1, n):
            raise ValueError(f"{len(images)} images for {n} videos: give one image, or one per video")
        pixels = torch.stack([self.prepare_image(im, H, W) for im in images])  # (m, 3, H, W) in [-1, 1]
        encoder = self.image_encoder  # loaded now (or refused: no image.encoder, another token width)
        with torch.no_grad():
            tokens = encoder(pixels.to(self.device)).float().cpu()  # (m, N, D)
        tokens = tokens.expand(n, *tokens.shape[1:]).clone()
        return Conditioning(image_tokens=tokens), Conditioning(image_tokens=torch.zeros_like(tokens))

    def _latent_index(self, index: int, num_frames: int) -> int:
        """The latent frame a given pixel frame becomes; only frame 0 of a causal VAE is encoded alone."""
        tf = self.autoencoder.temporal_factor
        if tf == 1:
            return index
        if index != 0:
            raise ValueError(f"this model's causal VAE encodes {tf} frames into each latent frame after the first: "
                             f"only frame 0 can be given as a single image (got frame {index})")
        return 0

    def _frame_conditioning(self, frames: Mapping[int, Sequence[ImageLike]], n: int, num_frames: int, H: int,
                            W: int) -> tuple[Conditioning, Conditioning]:
        if "context" not in self.accepts:
            raise ValueError("this model does not take a first frame or other given frames (it was trained without "
                             "context frames: conditions.context_frames)")
        latent = self.autoencoder.latent_shape(num_frames, H, W)  # (c, t, h, w)
        context = torch.zeros(n, *latent)  # (B, c, t, h, w)
        mask = torch.zeros(n, 1, latent[1], 1, 1)  # (B, 1, t, 1, 1): 1 where a frame is given
        seen: dict[int, int] = {}
        for index, images in frames.items():
            if not -num_frames <= index < num_frames:
                raise ValueError(f"given frame {index} is outside the {num_frames} frames of the video")
            if index % num_frames in seen:
                raise ValueError(f"frame {index % num_frames} is given twice (as {seen[index % num_frames]} and {index}; "
                                 "image= is frame 0)")
            seen[index % num_frames] = index
            if len(images) not in (1, n):
                raise ValueError(f"{len(images)} images for {n} videos: give one image, or one per video")
            k = self._latent_index(index % num_frames, num_frames)
            pixels = torch.stack([self.prepare_image(im, H, W) for im in images])  # (m, 3, H, W)
            with torch.no_grad():
                z = self.autoencoder.encode(pixels[:, :, None].to(self.device)).float().cpu()  # (m, c, t0, h, w)
            context[:, :, k] = z[:, :, 0].expand(n, *z.shape[1:2], *z.shape[3:])  # the image is (the start of) frame k
            mask[:, :, k] = 1
        cond = Conditioning(context=context * mask, context_mask=mask)
        return cond, cond.null(["context"])

    # ---------------------------------------------------------------- step 2: denoise
    def denoise(self, conds: Conditions, x_T: torch.Tensor, generators: Sequence[torch.Generator], scale: float,
                sampler: str, steps: int, eta: float, progress: bool = False,
                plan: Optional[torch.Tensor] = None, context_guidance: float = 1.0,
                temporal_guidance: float = 0.0) -> torch.Tensor:
        """A latent batch from its start noise ``x_T`` under classifier-free guidance of strength ``scale``.

        ``plan``: a ``(steps, T)`` timestep plan (diffusion/plans.py: per-frame levels, clean frames) instead
        of ``steps`` evenly spaced levels shared by every frame. ``context_guidance``: the scale s of
        context guidance on the given frames (module docstring); without given frames it is ignored,
        as ``scale`` is with nothing to guide on (the call warns about both). ``temporal_guidance``: the weight
        of VideoCrafter's temporal guidance (module docstring; 0 = none).
        """
        scale, steps, eta = check_sampling(self.schedule.num_timesteps, scale, sampler, steps, eta,
                                            planned=plan is not None)
        context_scale = checked_real("context_guidance", context_guidance)
        temporal_scale = self._checked_temporal_guidance(temporal_guidance)
        self._check_schedule(sampler, steps, planned=plan is not None)
        c = self.config
        fn = self.guided_fn(conds, scale, context_scale, temporal_scale)
        learned_sigma = getattr(self.model, "learned_sigma", False)
        return sample(fn, self.schedule, x_T.shape, sampler=sampler, steps=steps, eta=eta,
                      prediction=c.diffusion.prediction, learned_sigma=learned_sigma,
                      timestep_spacing=c.diffusion.timestep_spacing, steps_offset=c.diffusion.steps_offset,
                      final_alpha=c.diffusion.final_alpha, generator=list(generators),
                      x_T=x_T.to(self.device), progress=progress, plan=plan)

    def guided_fn(self, conds: Conditions, scale: float, context_guidance: float = 1.0,
                  temporal_guidance: float = 0.0):
        """The model function ``fn(x_t, t[, state])`` :meth:`denoise` samples with: the denoiser under
        classifier-free guidance of strength ``scale`` (and context and temporal guidance), for loops that
        step the sampler themselves (FIFO-Diffusion's queue, pipelines/fifo.py). The scales are taken as
        checked; ``t`` may be (B,) or (B, T), one level per frame (the denoiser contract)."""
        scale = scale if conds.guided else 1.0  # nothing to guide on: one plain pass
        context_scale = context_guidance
        no_frames = None  # the condition with its given frames dropped: context guidance's second branch
        if context_scale != 1.0 and conds.guided and _gives_frames(conds.cond):
            no_frames = conds.cond.null(["context"])
            if _same(conds.uncond, no_frames):  # the frames are the sole condition: cfg guides on them already
                scale, context_scale, no_frames = scale + context_scale - 1.0, 1.0, None
        cond = (conds.cond if conds.guided else _unguided(conds.cond)).to(self.device)
        uncond = conds.uncond.to(self.device) if conds.guided and scale != 1.0 else None
        # a self-conditioned model gets each step the previous step's x0 estimate (zeros first, as trained)
        return guided_model_fn(self.model, cond, uncond, scale, getattr(self.model, "learned_sigma", False),
                               self_condition="self_cond" in self.accepts,
                               second_uncond=None if no_frames is None else no_frames.to(self.device),
                               second_scale=context_scale, temporal_scale=temporal_guidance)

    def _checked_temporal_guidance(self, value) -> float:
        """``temporal_guidance`` as a finite float; other than 0 only for a model that can skip its temporal attention."""
        value = checked_real("temporal_guidance", value)
        if value != 0.0 and not getattr(self.model, "supports_temporal_guidance", False):
            raise ValueError(f"temporal_guidance={value:g}: this model cannot be evaluated without its temporal "
                             "attention (VideoCrafter's temporal guidance needs its temporal transformers): "
                             "leave temporal_guidance at 0")
        return value

    def _check_schedule(self, sampler: str, steps: int, planned: bool = False) -> None:
        """The sampler and step count against the diffusion section: ddpm has no step for an x0 scale, and
        ``steps_offset`` must not push the last step past the schedule."""
        d, n = self.config.diffusion, self.schedule.num_timesteps
        if sampler == "ddpm" and getattr(self.schedule, "x0_scale", None) is not None:
            raise ValueError(NO_SCALED_DDPM)
        if not planned and d.steps_offset and (steps - 1) * (n // steps) + d.steps_offset >= n:
            raise ValueError(f"steps={steps} with diffusion.steps_offset={d.steps_offset} visits timestep "
                             f"{(steps - 1) * (n // steps) + d.steps_offset}, past the schedule's last ({n - 1}): "
                             "take fewer steps")

    # ---------------------------------------------------------------- step 3: decode
    def decode(self, z: torch.Tensor, conds: Optional[Conditions] = None) -> torch.Tensor:
        """Pixels ``(B, 3, T, H, W)`` in [-1, 1] of latents z; given frames are kept exactly (in latent space)."""
        return self.autoencoder.decode(self.keep_given(z, conds)).clamp(-1, 1).float().cpu()

    @staticmethod
    def keep_given(z: torch.Tensor, conds: Optional[Conditions] = None) -> torch.Tensor:
        """The latents z with the given frames of ``conds`` put back exactly (what :meth:`decode` decodes)."""
        cond = None if conds is None or not conds.guided else conds.cond
        if cond is not None and cond.context is not None:
            m = cond.context_mask.to(z.device, z.dtype)
            z = cond.context.to(z.device, z.dtype) * m + z * (1 - m)
        return z

    def with_frames(self, conds: Conditions, context: torch.Tensor, mask: torch.Tensor) -> Conditions:
        """``conds`` with these given latent frames instead of its own (context ``(B, c, t, h, w)``, mask
        ``(B, 1, t, 1, 1)``), guided as :meth:`conditions` guides given frames: the unconditional branch keeps
        them when there is a prompt, a class or an image to guide on, and has none when they are the sole
        condition. Long videos continue a clip from its last frames this way (pipelines/long_video.py)."""
        if "context" not in self.accepts:
            raise ValueError("this model does not take given frames (it was trained without context frames: "
                             "conditions.context_frames)")
        context, mask = context * mask, mask
        others = any(getattr(conds.cond, name) is not None for name in ("labels", "text", "image_tokens"))
        cond = dataclasses.replace(conds.cond, context=context, context_mask=mask)
        uncond = dataclasses.replace(conds.uncond, context=context.clone() if others else torch.zeros_like(context),
                                     context_mask=mask.clone() if others else torch.zeros_like(mask))
        return Conditions(cond, uncond, True)

    # ---------------------------------------------------------------- all three
    @torch.no_grad()
    def __call__(self, labels: Optional[Sequence[int]] = None, num_videos: Optional[int] = None,
                 num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 eta: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False, prompt: Union[str, Sequence[str], None] = None,
                 negative_prompt: Union[str, Sequence[str], None] = None,
                 image: Union[ImageLike, Sequence[ImageLike], None] = None,
                 frames: Optional[Mapping[int, Union[ImageLike, Sequence[ImageLike]]]] = None,
                 context_guidance: float = 1.0, fps: Optional[float] = None,
                 temporal_guidance: float = 0.0, low_res: Optional[VideoLike] = None,
                 noise_level: Optional[int] = None, long=None) -> torch.Tensor:
        """Videos ``(B, C, T, H, W)`` in [-1, 1]; ``image`` is frame 0, ``frames`` maps frame indices to images.

        ``context_guidance``: Video LDM's guidance scale s on the given frames (module docstring), any
        finite number; 1 (the default) is none.

        ``temporal_guidance``: VideoCrafter's temporal guidance weight (module docstring), any finite number;
        0 (the default) is none; other than 0 a ValueError for a model without skippable temporal attention.

        ``fps``: the frame rate, for a model conditioned on it (module docstring): the condition of every
        video and the rate to write them at, ``pipe.frame_rate(fps)`` (default: the training data's
        native rate). A model without the condition takes none (ValueError).

        ``low_res``: an upsampler's video to upsample (module docstring), a ``(B or 1, 3, T, h, w)`` tensor in
        [-1, 1] or a video file; the videos have its T frames at ``conditions.low_res_factor`` × its size, one per
        low-resolution video (or ``num_videos`` of one). ``noise_level``: the augmentation level it is noised to
        (default ``sample.noise_level``), for a model trained with ``conditions.noise_level``.

        ``long``: a video of any length ``num_frames`` from a model trained on short clips, ``"autoregressive"``
        (clip after clip, each continuing the last frames of the one before) or ``"fifo"`` (FIFO-Diffusion),
        or their options (``moviola.pipelines.Autoregressive(...)``, ``moviola.pipelines.FIFO(...)``); see
        pipelines/long_video.py and pipelines/fifo.py. None (the default): one clip of ``num_frames`` frames.

        Every argument is checked before anything is encoded (module docstring); ``labels`` may be one
        int, a list, a numpy array or a tensor of ints.
        """
        c = self.config
        prompt, labels = as_prompts(prompt, "prompt"), as_labels(labels)
        sampler = c.sample.sampler if sampler is None else sampler
        steps_given, steps = steps, c.sample.steps if steps is None else steps
        scale, steps, eta_value = check_sampling(self.schedule.num_timesteps, c.sample.cfg if cfg is None else cfg,
                                                  sampler, steps, c.sample.eta if eta is None else eta)
        context_guidance = checked_real("context_guidance", context_guidance)
        temporal_guidance = self._checked_temporal_guidance(temporal_guidance)
        self._check_schedule(sampler, steps)
        fps = None if fps is None else checked_fps(fps)
        batch_size = checked_int("batch_size", batch_size)
        if prompt is not None and labels is not None:
            raise ValueError("give prompts or labels, not both")
        given = given_frames(image, frames)
        low = self.prepare_low_res(low_res)  # a file is read (not encoded) here: its frame count and size
        wanted = None if num_videos is None else checked_int("num_videos", num_videos)
        if wanted is None and low is not None and prompt is None and labels is None:
            wanted = low.shape[0]  # one video per low-resolution video
        n = count_videos(prompt, labels, given, wanted)
        seed = check_seed(seed, n)
        if eta is not None and eta_value != 0 and sampler not in READS_ETA:
            warn(f"eta={eta_value} is ignored by the {sampler} sampler (only {', '.join(sorted(READS_ETA))} reads it; "
                  "ddpm always adds the posterior noise, dpm++2m adds none): use the ddim sampler, or drop eta")
        if long is not None:  # a video of any length, clip by clip or through FIFO-Diffusion's queue
            from moviola.pipelines.long_video import generate_long

            return generate_long(self, long, Sampling(sampler, steps_given, eta_value, scale, context_guidance,
                                                      temporal_guidance),
                                 n=n, seed=seed, num_frames=num_frames, height=height, width=width, labels=labels,
                                 prompt=prompt, negative_prompt=negative_prompt, given=given, low_res=low,
                                 noise_level=noise_level, fps=fps, batch_size=batch_size, progress=progress, cfg=cfg)
        if low is not None:
            T, H, W = self.upsampled_size(low, num_frames, height, width)
        else:
            T = c.data.frames if num_frames is None else checked_int("num_frames", num_frames)
            H = c.data.size if height is None else checked_int("height", height)
            W = c.data.size if width is None else checked_int("width", width)
        latent = self.autoencoder.latent_shape(T, H, W)  # a frame count or size the autoencoder cannot take
        self._warn_outside_training(T, H, W)
        conds = self.conditions(n, T, H, W, labels=labels, prompt=prompt, negative_prompt=negative_prompt,
                                frames=given, fps=fps, low_res=low, noise_level=noise_level)
        self._warn_unused_guidance(conds, cfg, scale, negative_prompt, context_guidance)
        scale = scale if conds.guided else 1.0  # nothing to guide: one pass
        videos = []
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            # one generator per video: its start noise and every later noise draw (DDPM, DDIM eta > 0)
            # come from seed + i alone, so a video does not depend on the batch it was made in
            gens = [torch.Generator().manual_seed(seed + i) for i in idx]
            x_T = randn((len(idx), *latent), generator=gens)
            part = self.noise_low_res(conds.index(idx), gens)  # its ε drawn after the start noise
            z = self.denoise(part, x_T, gens, scale, sampler, steps, eta_value, progress,
                             context_guidance=context_guidance, temporal_guidance=temporal_guidance)
            videos.append(self.decode(z, part))
        return torch.cat(videos)

    def _warn_outside_training(self, T: int, H: int, W: int) -> None:
        """More frames than the model was trained on, or any other frame size, runs but degrades: say so.
        Fewer frames do not warn: every temporal position they use was seen in training."""
        d = self.config.data
        longer, resized = T > d.frames, (H, W) != (d.size, d.size)
        if not (longer or resized):
            return
        harm = []
        if longer:
            harm.append("quality degrades beyond the training length (for a longer video pass "
                        "long='autoregressive' or long='fifo': --long on the command line)")
        if resized:
            harm.append(f"quality degrades at another size (generate at {d.size}×{d.size})")
        warn(f"this model was trained on {d.frames} frames of {d.size}×{d.size}; asked for {T} frames of {H}×{W}: "
              + "; ".join(harm))

    def _warn_unused_guidance(self, conds: Conditions, cfg, scale: float, negative_prompt,
                              context_guidance: float = 1.0) -> None:
        """A guidance scale with nothing to guide on, or a negative prompt without guidance, changes nothing."""
        if context_guidance != 1.0 and not (conds.guided and _gives_frames(conds.cond)):
            warn(f"context_guidance={context_guidance:g} is ignored: it guides on given frames and none were given "
                 + ("(pass image= or frames=)" if "context" in self.accepts
                    else "(this model takes none: it was trained without conditions.context_frames)"))
        if cfg is not None and not conds.guided:
            warn(f"cfg={scale} is ignored: the sample is unconditional (this model takes no labels or prompt "
                  "and no frames were given)")
        elif negative_prompt is not None and conds.guided and scale == 1.0:
            warn("the negative prompt is ignored at cfg=1 (it acts only through guidance): pass a cfg other than 1 "
                  f"(this model's default is {self.config.sample.cfg:g})")


def _unguided(cond: Conditioning) -> Conditioning:
    """An unguided call's condition: only the fields that are no guidance target (the frame rate)."""
    return Conditioning(**{name: getattr(cond, name) for name in UNGUIDED})


def _gives_frames(cond: Conditioning) -> bool:
    """Whether a condition gives frames (a context mask with a frame in it)."""
    return cond.context_mask is not None and bool(cond.context_mask.any())


def _same(a: Conditioning, b: Conditioning) -> bool:
    """Whether two conditions have the same fields with the same values."""
    return a.present() == b.present() and all(torch.equal(getattr(a, n), getattr(b, n)) for n in a.present())


def _merge(parts: Sequence[Conditioning]) -> Conditioning:
    """One Conditioning with the fields of every part (each part sets different fields)."""
    out = Conditioning()
    for part in parts:
        for name in part.present():
            setattr(out, name, getattr(part, name))
    return out
