"""Generation: autoencoder + denoiser + diffusion sampler (+ text encoder) behind one call.

``pipe(labels=[3, 17], num_frames=16, steps=50, cfg=4, seed=0)`` (class-conditional) or
``pipe(prompt=["a red circle moving right"], negative_prompt="...", image=first_frame)``
(text and image conditioned) returns videos ``(B, C, T, H, W)`` in [-1, 1].

Guidance compares against the null condition: the empty prompt "" for text (or the negative
prompt, when one is given), the null class for labels. Given frames (image-to-video) stay in the
unconditional branch when there is a prompt or a class to guide on, and are nulled ("no frame
given") only when they are the sole condition.

Image-to-video (a model with ``context_frames``): the given image becomes frame 0. It is
resized to cover the frame size keeping its aspect ratio, then centre-cropped (the rule of the
training data, ``data/transforms.resize_and_crop``); encoded, it is the context latent of frame 0,
and the sampled latent's frame 0 is replaced by it before decoding, so the output's first frame
is the given image up to the autoencoder's reconstruction error. Video ``i`` of a call starts from the noise of seed
``seed + i`` and draws every later noise (DDPM, DDIM with eta > 0) from its own generator, so a
video is a pure function of its seed and its condition, whatever the batch it was made in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from moviola.autoencoders import Autoencoder, build_autoencoder
from moviola.conditioning import Conditioning
from moviola.conditioning.context import first_frame_mask
from moviola.conditioning.text import build_text
from moviola.config import RunConfig
from moviola.diffusion import NoiseSchedule, build_schedule, guided_model_fn, sample
from moviola.diffusion.schedule import randn
from moviola.io.checkpoint import resolve_checkpoint
from moviola.models.loading import load_model, load_run_config
from moviola.utils import resolve_device


ImageLike = Union[str, Path, torch.Tensor]


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

    def _text_conditioning(self, prompt: Sequence[str], negative_prompt) -> tuple[Conditioning, Conditioning]:
        if "text" not in self.accepts:
            raise ValueError("this model does not take text: do not pass a prompt"
                             + (" (it is class-conditional: pass labels)" if "labels" in self.accepts else ""))
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
        """A first frame as ``(3, H, W)`` in [-1, 1]: a file (image, or a video's first frame) or a
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

    def _image_conditioning(self, images: Sequence[ImageLike], n: int, frames: int, H: int, W: int,
                            latent: tuple) -> tuple[Conditioning, Conditioning]:
        if "context" not in self.accepts:
            raise ValueError("this model does not take a first frame (it was trained without context frames; "
                             "conditions.context_frames)")
        if len(images) not in (1, n):
            raise ValueError(f"{len(images)} images for {n} videos: give one image, or one per video")
        frames_in = torch.stack([self.prepare_image(im, H, W) for im in images])  # (k, 3, H, W)
        with torch.no_grad():
            z0 = self.autoencoder.encode(frames_in[:, :, None].to(self.device)).float().cpu()  # (k, c, t0, h, w)
        context = torch.zeros(len(images), *latent)
        context[:, :, :1] = z0[:, :, :1]  # the image is (the start of) latent frame 0
        if len(images) == 1:
            context = context.expand(n, *latent)
        mask = first_frame_mask(n, latent[1])
        cond = Conditioning(context=context * mask, context_mask=mask)
        return cond, cond.null(["context"])

    @torch.no_grad()
    def __call__(self, labels: Optional[Sequence[int]] = None, num_videos: Optional[int] = None,
                 num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 eta: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False, prompt: Union[str, Sequence[str], None] = None,
                 negative_prompt: Union[str, Sequence[str], None] = None,
                 image: Union[ImageLike, Sequence[ImageLike], None] = None) -> torch.Tensor:
        c = self.config
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt is not None and labels is not None:
            raise ValueError("give prompts or labels, not both")
        if prompt is not None and len(prompt) == 0:
            raise ValueError("the prompt list is empty: give at least one prompt")
        images = None if image is None else ([image] if isinstance(image, (str, Path, torch.Tensor)) else list(image))
        if images is not None and not images:
            raise ValueError("the image list is empty")
        if prompt is not None:
            n = len(prompt)
        elif labels is not None:
            n = len(labels)
        else:
            n = len(images) if images is not None and num_videos is None else (num_videos or 1)
        if n <= 0:
            raise ValueError("nothing to generate: give at least one label or num_videos >= 1")
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        frames = c.data.frames if num_frames is None else num_frames
        H = c.data.size if height is None else height
        W = c.data.size if width is None else width
        latent = self.autoencoder.latent_shape(frames, H, W)

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
        if images is not None:
            image_cond, image_null = self._image_conditioning(images, n, frames, H, W, latent)
            # with a prompt or a class, guidance is on those and the unconditional branch keeps the frame
            # (trained whenever the caption or class is dropped and the frame is not: p·(1 − p_ctx) of
            # the batches, against p·p_ctx for nulling both); with nothing else, guidance is on the frame
            parts.append((image_cond, image_cond if parts else image_null))
        cond_all = _merge([p[0] for p in parts])
        uncond_all = _merge([p[1] for p in parts])
        guided = bool(parts)

        scale = c.sample.cfg if cfg is None else cfg
        if not guided:
            scale = 1.0  # nothing to guide on: one plain conditional pass
        sampler = sampler or c.sample.sampler
        steps = c.sample.steps if steps is None else steps
        eta = c.sample.eta if eta is None else eta
        learned_sigma = getattr(self.model, "learned_sigma", False)

        videos = []
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            cond = cond_all.index(idx).to(self.device) if guided else Conditioning()
            # one generator per video: its start noise and every later noise draw (DDPM, DDIM eta > 0)
            # come from seed + i alone, so a video does not depend on the batch it was made in
            gens = [torch.Generator().manual_seed(seed + i) for i in idx]
            x_T = randn((len(idx), *latent), generator=gens)
            uncond = uncond_all.index(idx).to(self.device) if guided and scale != 1.0 else None
            fn = guided_model_fn(self.model, cond, uncond, scale, learned_sigma)
            z = sample(fn, self.schedule, x_T.shape, sampler=sampler, steps=steps, eta=eta,
                       prediction=c.diffusion.prediction, learned_sigma=learned_sigma,
                       timestep_spacing=c.diffusion.timestep_spacing, generator=gens,
                       x_T=x_T.to(self.device), progress=progress)
            if cond.context is not None:  # given frames are kept exactly (in latent space)
                m = cond.context_mask.to(z.dtype)
                z = cond.context.to(z.dtype) * m + z * (1 - m)
            videos.append(self.autoencoder.decode(z).clamp(-1, 1).float().cpu())
        return torch.cat(videos)


def _merge(parts: Sequence[Conditioning]) -> Conditioning:
    """One Conditioning with the fields of every part (each part sets different fields)."""
    out = Conditioning()
    for part in parts:
        for name in part.present():
            setattr(out, name, getattr(part, name))
    return out


def load_pipeline(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device, None] = None) -> Pipeline:
    """Autoencoder + denoiser + diffusion of a checkpoint (or a run directory's newest one)."""
    dev = resolve_device("auto" if device is None else device)
    ckpt = resolve_checkpoint(path)
    cfg = load_run_config(ckpt)
    ae = build_autoencoder(cfg.autoencoder)
    model = load_model(ckpt, weights=weights, device=dev, latent_channels=ae.latent_channels)
    return Pipeline(model, ae, build_schedule(cfg.diffusion), cfg, device=dev)
