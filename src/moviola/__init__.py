"""moviola: latent video diffusion in PyTorch (Latte, W.A.L.T, Video LDM, VideoCrafter)."""
from __future__ import annotations

from moviola.conditioning import Conditioning

__version__ = "0.1.0"


def load_model(path, weights: str = "ema", device="cpu"):
    """A denoiser from a checkpoint directory (or a run's newest checkpoint), in eval mode."""
    from moviola.models.loading import load_model as _load

    return _load(path, weights=weights, device=device)


def load_pipeline(path, weights: str = "ema", device=None, image_encoder=None):
    """Autoencoder + denoiser + diffusion from a checkpoint; call it to generate videos. ``image_encoder``: where the
    CLIP vision directory of a model that reads image tokens is on this machine (default: its ``image.encoder``)."""
    from moviola.pipelines.generate import load_pipeline as _load

    return _load(path, weights=weights, device=device, image_encoder=image_encoder)


def load_autoencoder(path):
    """An autoencoder: ``identity``, a diffusers AutoencoderKL directory, or a moviola checkpoint's."""
    from moviola.autoencoders.loading import load_autoencoder as _load

    return _load(path)


def save_video(video, path, fps: int = 8):
    """Write (C, T, H, W) in [-1, 1] as mp4, gif or png (by suffix); (B, C, T, H, W) makes a grid."""
    from moviola.video import save_video as _save

    return _save(video, path, fps=fps)


__all__ = ["Conditioning", "load_autoencoder", "load_model", "load_pipeline", "save_video", "__version__"]
