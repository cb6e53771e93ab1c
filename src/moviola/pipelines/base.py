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

Given frames (a model with context frames): ``image=`` is frame 0 (image-to-video); ``frames=``
maps any frame index to an image (prediction from a first frame, interpolation between the ends,
any keyframes). An image is resized to cover the frame size keeping its aspect ratio, then
centre-cropped (the rule of the training data, ``data/transforms.resize_and_crop``); encoded, it is
the context latent of its frame. With a causal VAE, whose latent frames after the first each cover
several frames, only frame 0 can be given alone. Video ``i`` of a call starts from the noise of
seed ``seed + i`` and draws every later noise (DDPM, DDIM with eta > 0) from its own generator, so
a video is a pure function of its seed and its condition, whatever the batch it was made in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from moviola.autoencoders import Autoencoder
from moviola.conditioning import Conditioning
from moviola.conditioning.text import build_text
from moviola.config import RunConfig
from moviola.diffusion import NoiseSchedule, guided_model_fn, sample
from moviola.diffusion.schedule import randn
from moviola.utils import resolve_device

ImageLike = Union[str, Path, torch.Tensor]


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
                 config: RunConfig, device: Union[str, torch.device, None] = None, text=None):
        self.device = resolve_device("auto" if device is None else device)
        self.model = model.to(self.device).eval()
        self.autoencoder = autoencoder.to(self.device).eval()
        self.schedule = schedule
        self.config = config
        self._text = text  # a TextEmbedder; built from the config on first use when None

    @property
    def accepts(self) -> frozenset:
        return getattr(self.model, "accepts", frozenset())

    @property
    def text(self):
        if self._text is None:
            self._text = build_text(self.config, self.device)
        return self._text

    # ---------------------------------------------------------------- step 1: conditions
    def conditions(self, n: int, num_frames: int, height: int, width: int, labels: Optional[Sequence[int]] = None,
                   prompt: Optional[Sequence[str]] = None, negative_prompt: Union[str, Sequence[str], None] = None,
                   frames: Optional[Mapping[int, Sequence[ImageLike]]] = None) -> Conditions:
        """The condition of ``n`` videos of ``num_frames`` frames of ``height × width``, and its null.

        ``frames`` maps a pixel frame index to one image, or one per video. Every check happens here,
        before any sampling.
        """
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
        if frames:
            given, given_null = self._frame_conditioning(frames, n, num_frames, height, width)
            # with a prompt or a class, guidance is on those and the unconditional branch keeps the frames
            # (trained whenever the caption or class is dropped and the frames are not: p·(1 − p_ctx) of
            # the batches, against p·p_ctx for nulling both); with nothing else, guidance is on the frames
            parts.append((given, given if parts else given_null))
        return Conditions(_merge([p[0] for p in parts]), _merge([p[1] for p in parts]), bool(parts))

    def _text_conditioning(self, prompt: Sequence[str], negative_prompt) -> tuple[Conditioning, Conditioning]:
        n = len(prompt)
        if negative_prompt is None:
            negative = [""] * n
        elif isinstance(negative_prompt, str):
            negative = [negative_prompt] * n
        else:
            negative = list(negative_prompt)
            if len(negative) != n:
                raise ValueError(f"{len(negative)} negative prompts for {n} prompts: give one, or one per prompt")
        emb, mask = self.text(list(prompt))
        null_emb, null_mask = self.text(negative)
        return Conditioning(text=emb, text_mask=mask), Conditioning(text=null_emb, text_mask=null_mask)

    def _label_conditioning(self, labels: Sequence[int]) -> tuple[Conditioning, Conditioning]:
        if "labels" not in self.accepts:
            raise ValueError("this model is not class-conditional: do not pass labels"
                             + (" (it takes text: pass a prompt)" if "text" in self.accepts else ""))
        num_classes = self.config.conditions.num_classes
        labels = [int(y) for y in labels]
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
                plan: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A latent batch from its start noise ``x_T`` under classifier-free guidance of strength ``scale``.

        ``plan``: a ``(steps, T)`` timestep plan (diffusion/plans.py: per-frame levels, clean frames) instead
        of ``steps`` evenly spaced levels shared by every frame.
        """
        c = self.config
        cond = conds.cond.to(self.device) if conds.guided else Conditioning()
        uncond = conds.uncond.to(self.device) if conds.guided and scale != 1.0 else None
        learned_sigma = getattr(self.model, "learned_sigma", False)
        fn = guided_model_fn(self.model, cond, uncond, scale, learned_sigma)
        return sample(fn, self.schedule, x_T.shape, sampler=sampler, steps=steps, eta=eta,
                      prediction=c.diffusion.prediction, learned_sigma=learned_sigma,
                      timestep_spacing=c.diffusion.timestep_spacing, generator=list(generators),
                      x_T=x_T.to(self.device), progress=progress, plan=plan)

    # ---------------------------------------------------------------- step 3: decode
    def decode(self, z: torch.Tensor, conds: Optional[Conditions] = None) -> torch.Tensor:
        """Pixels ``(B, 3, T, H, W)`` in [-1, 1] of latents z; given frames are kept exactly (in latent space)."""
        cond = None if conds is None or not conds.guided else conds.cond
        if cond is not None and cond.context is not None:
            m = cond.context_mask.to(z.device, z.dtype)
            z = cond.context.to(z.device, z.dtype) * m + z * (1 - m)
        return self.autoencoder.decode(z).clamp(-1, 1).float().cpu()

    # ---------------------------------------------------------------- all three
    @torch.no_grad()
    def __call__(self, labels: Optional[Sequence[int]] = None, num_videos: Optional[int] = None,
                 num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 eta: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False, prompt: Union[str, Sequence[str], None] = None,
                 negative_prompt: Union[str, Sequence[str], None] = None,
                 image: Union[ImageLike, Sequence[ImageLike], None] = None,
                 frames: Optional[Mapping[int, Union[ImageLike, Sequence[ImageLike]]]] = None) -> torch.Tensor:
        """Videos ``(B, C, T, H, W)`` in [-1, 1]; ``image`` is frame 0, ``frames`` maps frame indices to images."""
        c = self.config
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt is not None and labels is not None:
            raise ValueError("give prompts or labels, not both")
        if prompt is not None and len(prompt) == 0:
            raise ValueError("the prompt list is empty: give at least one prompt")
        given = _given_frames(image, frames)
        if prompt is not None:
            n = len(prompt)
        elif labels is not None:
            n = len(labels)
        else:
            widest = max((len(v) for v in given.values()), default=0)
            n = widest if given and num_videos is None else (num_videos or 1)
        if n <= 0:
            raise ValueError("nothing to generate: give at least one label or num_videos >= 1")
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        T = c.data.frames if num_frames is None else num_frames
        H = c.data.size if height is None else height
        W = c.data.size if width is None else width
        latent = self.autoencoder.latent_shape(T, H, W)
        conds = self.conditions(n, T, H, W, labels=labels, prompt=prompt, negative_prompt=negative_prompt,
                                frames=given)
        scale = (c.sample.cfg if cfg is None else cfg) if conds.guided else 1.0  # nothing to guide: one pass
        sampler = sampler or c.sample.sampler
        steps = c.sample.steps if steps is None else steps
        eta = c.sample.eta if eta is None else eta
        videos = []
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            # one generator per video: its start noise and every later noise draw (DDPM, DDIM eta > 0)
            # come from seed + i alone, so a video does not depend on the batch it was made in
            gens = [torch.Generator().manual_seed(seed + i) for i in idx]
            x_T = randn((len(idx), *latent), generator=gens)
            part = conds.index(idx)
            z = self.denoise(part, x_T, gens, scale, sampler, steps, eta, progress)
            videos.append(self.decode(z, part))
        return torch.cat(videos)


def _given_frames(image, frames) -> dict[int, list]:
    """``image`` (frame 0) and ``frames`` as one mapping: frame index -> list of images (one, or one per video)."""
    out: dict[int, list] = {}
    if image is not None:
        images = [image] if isinstance(image, (str, Path, torch.Tensor)) else list(image)
        if not images:
            raise ValueError("the image list is empty")
        out[0] = images
    for index, value in (frames or {}).items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"frames maps frame indices (int) to images; got the key {index!r}")
        if index in out:
            raise ValueError(f"frame {index} is given twice (image= is frame 0)")
        images = [value] if isinstance(value, (str, Path, torch.Tensor)) else list(value)
        if not images:
            raise ValueError(f"no image for frame {index}")
        out[index] = images
    return out


def _merge(parts: Sequence[Conditioning]) -> Conditioning:
    """One Conditioning with the fields of every part (each part sets different fields)."""
    out = Conditioning()
    for part in parts:
        for name in part.present():
            setattr(out, name, getattr(part, name))
    return out
