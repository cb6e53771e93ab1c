"""Generation: autoencoder + denoiser + diffusion sampler behind one call.

``pipe(labels=[3, 17], num_frames=16, steps=50, cfg=4, seed=0)`` returns videos
``(B, C, T, H, W)`` in [-1, 1]. Video ``i`` of a call starts from the noise of seed
``seed + i`` and draws every later noise (DDPM, DDIM with eta > 0) from its own generator, so a
video is a pure function of its seed and its condition, whatever the batch it was made in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from moviola.autoencoders import Autoencoder, build_autoencoder
from moviola.conditioning import Conditioning
from moviola.config import RunConfig, autoencoder_latent_channels, config_from_json
from moviola.diffusion import NoiseSchedule, guided_model_fn, sample
from moviola.diffusion.schedule import randn
from moviola.models.registry import build_model
from moviola.training.checkpoint import (CheckpointError, check_state_dict, load_weights, resolve_checkpoint,
                                         weights_name)
from moviola.utils import resolve_device


class Pipeline:
    def __init__(self, model: torch.nn.Module, autoencoder: Autoencoder, schedule: NoiseSchedule,
                 config: RunConfig, device: Union[str, torch.device, None] = None):
        self.device = resolve_device("auto" if device is None else device)
        self.model = model.to(self.device).eval()
        self.autoencoder = autoencoder.to(self.device).eval()
        self.schedule = schedule
        self.config = config

    def _conditioning(self, labels: Optional[Sequence[int]], n: int) -> tuple[Conditioning, list[str]]:
        accepts = getattr(self.model, "accepts", frozenset())
        if labels is not None:
            if "labels" not in accepts:
                raise ValueError("this model is not class-conditional: do not pass labels")
            num_classes = getattr(self.model, "num_classes", 0)
            labels = [int(y) for y in labels]
            bad = [y for y in labels if not (0 <= y < num_classes or y == -1)]
            if bad:
                raise ValueError(f"labels {bad} out of range: this model has {num_classes} classes (0..{num_classes - 1})")
            return Conditioning(labels=torch.tensor(labels, dtype=torch.long)), ["labels"]
        if "labels" in accepts:
            raise ValueError(f"this model is class-conditional: pass labels (0..{self.model.num_classes - 1})")
        if "text" in accepts:
            raise ValueError("this is a text-to-video model, and prompting needs a text encoder, which moviola "
                             "does not have yet; it can be converted (moviola convert to-diffusers) and sampled "
                             "with diffusers' LattePipeline meanwhile")
        return Conditioning(), []

    @torch.no_grad()
    def __call__(self, labels: Optional[Sequence[int]] = None, num_videos: Optional[int] = None,
                 num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 eta: Optional[float] = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False) -> torch.Tensor:
        c = self.config
        n = len(labels) if labels is not None else (1 if num_videos is None else num_videos)
        if n <= 0:
            raise ValueError("nothing to generate: give at least one label or num_videos >= 1")
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        cond_all, guided = self._conditioning(labels, n)
        frames = c.data.frames if num_frames is None else num_frames
        H = c.data.size if height is None else height
        W = c.data.size if width is None else width
        latent = self.autoencoder.latent_shape(frames, H, W)
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
            uncond = cond.null(guided) if guided and scale != 1.0 else None
            fn = guided_model_fn(self.model, cond, uncond, scale, learned_sigma)
            z = sample(fn, self.schedule, x_T.shape, sampler=sampler, steps=steps, eta=eta,
                       prediction=c.diffusion.prediction, learned_sigma=learned_sigma,
                       timestep_spacing=c.diffusion.timestep_spacing, generator=gens,
                       x_T=x_T.to(self.device), progress=progress)
            videos.append(self.autoencoder.decode(z).clamp(-1, 1).float().cpu())
        return torch.cat(videos)


def _load_config(ckpt: Path) -> RunConfig:
    try:
        return config_from_json(ckpt / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"missing config.json in checkpoint {ckpt}") from None


def load_model(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device] = "cpu",
               latent_channels: Optional[int] = None) -> torch.nn.Module:
    """The denoiser of a checkpoint directory (or a run's newest checkpoint), in eval mode."""
    ckpt = resolve_checkpoint(path)
    cfg = _load_config(ckpt)
    if latent_channels is None:  # from the VAE's config.json: no VAE weights are loaded for the denoiser
        latent_channels = autoencoder_latent_channels(cfg.autoencoder)
    model = build_model(cfg.model, latent_channels)
    name = weights_name(ckpt, weights)
    sd = load_weights(ckpt, name)
    check_state_dict(model, sd, f"{ckpt}/{name}.safetensors")
    model.load_state_dict(sd)
    return model.to(resolve_device(device) if isinstance(device, str) else device).eval()


def load_pipeline(path: Union[str, Path], weights: str = "ema", device: Union[str, torch.device, None] = None) -> Pipeline:
    """Autoencoder + denoiser + diffusion of a checkpoint (or a run directory's newest one)."""
    from moviola.training.trainer import build_schedule

    dev = resolve_device("auto" if device is None else device)
    ckpt = resolve_checkpoint(path)
    cfg = _load_config(ckpt)
    ae = build_autoencoder(cfg.autoencoder)
    model = load_model(ckpt, weights=weights, device=dev, latent_channels=ae.latent_channels)
    return Pipeline(model, ae, build_schedule(cfg), cfg, device=dev)
