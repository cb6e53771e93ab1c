"""Reconstruction metrics of an autoencoder: PSNR, SSIM and temporal flicker, on videos in [-1, 1].

All three are computed per video on the [0, 1] scale and averaged:

- **PSNR** ``10 log10(1 / MSE)`` over every pixel of the video (identical videos: 100 dB, a cap that
  keeps the number finite in JSON).
- **SSIM** (Wang et al. 2004): per frame and channel, an 11×11 Gaussian window with σ = 1.5,
  ``C1 = (0.01)², C2 = (0.03)²`` on the [0, 1] range, the mean SSIM map over the valid region
  (no padding), averaged over channels and frames — the reference implementation's choices, which
  scikit-image reproduces with ``gaussian_weights=True, use_sample_covariance=False``.
- **Flicker**: the mean absolute difference between the reconstruction's and the input's
  frame-to-frame changes, ``mean |(x̂[t+1] - x̂[t]) - (x[t+1] - x[t])|`` (on [0, 1]); 0 when the
  reconstruction changes over time exactly as the input does. A frame-wise autoencoder whose
  errors differ from frame to frame flickers even when each frame's PSNR is high.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unit(video: torch.Tensor) -> torch.Tensor:
    return (video.double().clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1], float64 for the statistics


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"the videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() != 5:
        raise ValueError(f"expected videos (B, C, T, H, W), got shape {tuple(x.shape)}")


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per video ``(B,)``."""
    _check(recon, target)
    mse = ((_unit(recon) - _unit(target)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(recon: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per video ``(B,)`` (frames and channels averaged)."""
    _check(recon, target)
    B, C, T, H, W = recon.shape
    if H < window or W < window:
        raise ValueError(f"SSIM's {window}×{window} window needs frames of at least that size, got {H}×{W}")
    x = _unit(recon).transpose(1, 2).reshape(B * T * C, 1, H, W)  # (B·T·C, 1, H, W)
    y = _unit(target).transpose(1, 2).reshape(B * T * C, 1, H, W)
    g = _gaussian_window(window, sigma)
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(z, kx), ky)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.view(B, T * C, -1).mean(dim=(1, 2))


def flicker(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Temporal flicker per video ``(B,)``; needs at least two frames."""
    _check(recon, target)
    if recon.shape[2] < 2:
        raise ValueError("flicker needs videos of at least two frames")
    d_rec = _unit(recon).diff(dim=2)
    d_ref = _unit(target).diff(dim=2)
    return (d_rec - d_ref).abs().flatten(1).mean(1)


def reconstruction_metrics(recon: torch.Tensor, target: torch.Tensor) -> dict[str, list[float]]:
    """Per-video PSNR, SSIM (when frames are ≥ 11 px) and flicker (when ≥ 2 frames)."""
    out = {"psnr": psnr(recon, target).tolist()}
    if min(recon.shape[3:]) >= 11:
        out["ssim"] = ssim(recon, target).tolist()
    if recon.shape[2] >= 2:
        out["flicker"] = flicker(recon, target).tolist()
    return out


def summarize(rows: dict[str, list[float]]) -> dict[str, float]:
    return {k: (sum(v) / len(v) if v else math.nan) for k, v in rows.items()}
