"""Diffusion training losses: simple MSE on eps / v / x0, min-SNR weighting, and IDDPM's hybrid loss.

The hybrid loss (IDDPM, as DiT and Latte train it, ``learn_sigma=True``) adds a variational-bound
term to the MSE. The model returns 2C channels: the first C are the mean prediction and the
last C a value v in [-1, 1] that interpolates the log variance between the posterior variance
and beta_t. The VB term sees the mean prediction *detached*, so the MSE alone trains the mean
and the VB trains only the variance (IDDPM §3.1).

With an x0 scale (``schedule.x0_scale``, VideoCrafter's ``use_scale``) the process at t is the ordinary one of
the scaled data ``s_t x0`` (DynamiCrafter's training multiplies x0 by ``scale_arr[t]`` before its ``p_losses``):
``x_t`` comes from ``q_sample``, which applies the scale, the x0 target is ``s_t x0`` and the v target is that of
``s_t x0``; the eps target is the noise. The self-conditioning estimate is x0 itself (the model's estimate over
``s_t``), as the samplers hand it on. The learned variance (IDDPM's VB term) is refused with it: its posterior is
the ordinary process's, and the only sampler that reads it (DDPM) is not defined for a scaled process.

Every term is computed as a per-element map first and reduced last. Per-frame timesteps
``(B, T)`` therefore work unchanged: each frame uses its own posterior, and frames at t == 0
use the decoder NLL instead of the KL.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from moviola.conditioning import Conditioning
from moviola.diffusion.schedule import PREDICTIONS, NoiseSchedule, broadcast_timesteps, randn_like

LOSS_WEIGHTINGS = ("none", "min_snr")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of the 8-bit bin that holds x under ``N(means, exp(log_scales) ** 2)``.

    x holds pixel values in [-1, 1] (256 levels, spacing 2/255). Each bin is ``x ± 1/255``, and the
    two end bins reach out to ±inf, so the probabilities of the 256 levels sum to 1 (IDDPM's
    decoder, DDPM §3.3). IDDPM uses a tanh approximation of the normal CDF. We use the exact
    CDF (``ndtr`` / ``log_ndtr``), which changes the loss only in the 4th digit.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + 1.0 / 255)  # standardized upper bin edge
    lower = inv_std * (centered - 1.0 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(z < upper): the bottom bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(z > lower): the top bin
    # P(lower < z < upper), taken from the tail it lies in so that it keeps its precision.
    delta = torch.where(centered > 0, torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                        torch.special.ndtr(upper) - torch.special.ndtr(lower))
    log_delta = torch.log(delta.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))  # (B, ...) -> (B,)


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) in float64, with t's shape.

    The weight is ``min(snr, gamma)`` on the x0 error, expressed in the loss of each parameterization:
    ``/ snr`` for eps and ``/ (snr + 1)`` for v. At zero SNR the eps weight takes its limit, 1.
    """
    snr = schedule.snr(t)
    if prediction == "eps":
        return (gamma / snr).clamp(max=1.0)  # min(snr, g) / snr, also at snr == 0 (g / 0 = inf)
    if prediction == "v":
        return snr.clamp(max=gamma) / (snr + 1.0)
    return snr.clamp(max=gamma)


def _with_estimate(model, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, cond, use: torch.Tensor,
                   prediction: str):
    """``cond`` with ``self_cond``: the model's own x0 estimate (from a zero estimate, no gradient) where
    ``use`` (B,) is True, zeros elsewhere."""
    cond = Conditioning() if cond is None else cond
    zeros = torch.zeros_like(x_t)
    if bool(use.any()):
        with torch.no_grad():
            first = model(x_t, schedule.model_timesteps(t), dataclasses.replace(cond, self_cond=zeros))
            est = schedule.to_x0(first[:, :x_t.shape[1]].to(x_t.dtype), prediction, x_t, t)  # (B, C, T, H, W)
            if getattr(schedule, "x0_scale", None) is not None:
                est = schedule.unscale_x0(est, t)  # x0 itself, as the samplers' estimate
        keep = use.to(x_t.device).view(-1, *([1] * (x_t.dim() - 1)))
        zeros = torch.where(keep, est.to(x_t.dtype), zeros).detach()
    return dataclasses.replace(cond, self_cond=zeros)


def training_losses(
    model,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    cond=None,
    prediction: str = "eps",
    learned_sigma: bool = False,
    noise: Optional[torch.Tensor] = None,
    loss_weighting: str = "none",
    min_snr_gamma: float = 5.0,
    self_cond: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Per-example diffusion losses for ``model(x_t, t, cond)``.

    Args:
        x0: clean data ``(B, C, T, H, W)`` (or ``(B, C, H, W)`` with t of shape (B,)).
        t: schedule indices, ``(B,)`` or per frame ``(B, T)``. A respaced schedule calls the model
            with the original timesteps (``schedule.timestep_map``).
        prediction: what the mean channels predict, ``"eps" | "v" | "x0"``.
        learned_sigma: the model returns 2C channels, and the IDDPM hybrid loss ``mse + vb`` is used.
        loss_weighting: ``"none"`` or ``"min_snr"`` (Min-SNR-gamma, applied per frame to the MSE term only).
        self_cond: self-conditioning (Chen et al. 2022, "Analog Bits"; W.A.L.T): a (B,) bool tensor, True for
            the examples trained on their own estimate. The model first predicts x0 with a zero estimate
            (no gradient); those examples are then trained given ``stopgrad(x̃0)`` in ``cond.self_cond``, the
            others given zeros, exactly as the first pass and as sampling's first step see it.

    Returns a dict with:
        ``loss`` (B,), the value to average and backpropagate;
        ``mse`` (B,), the unweighted mean squared error of the mean prediction;
        ``vb`` (B,), in bits per dimension (only with ``learned_sigma``);
        ``x_t``, ``target`` and ``pred`` (the mean channels), for logging and debugging.
    All are in at least float32, whatever the dtype of x0 and of the model.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss_weighting {loss_weighting!r}; choose one of {list(LOSS_WEIGHTINGS)}")
    scaled = getattr(schedule, "x0_scale", None) is not None
    if scaled and learned_sigma:
        raise ValueError("learned_sigma (the VB term) is not defined with an x0 scale (diffusion.x0_scale): its "
                         "posterior is the unscaled process's; train the mean only (model.learned_sigma: false)")
    if noise is None:
        noise = randn_like(x0)
    t = t.to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)  # with an x0 scale: sqrt(ab) s_t x0 + sqrt(1 - ab) noise
    if self_cond is not None:
        cond = _with_estimate(model, schedule, x_t, t, cond, self_cond, prediction)
    out = model(x_t, schedule.model_timesteps(t), cond)

    C = x0.shape[1]
    want = 2 * C if learned_sigma else C
    if out.shape[1] != want or out.shape[2:] != x0.shape[2:]:
        raise ValueError(f"model output {tuple(out.shape)} does not fit x {tuple(x0.shape)} "
                         f"(expected {want} channels{' with learned sigma' if learned_sigma else ''})")
    # The loss terms are computed in at least float32, even for a bf16 / fp16 model or autocast.
    dtype = torch.promote_types(torch.promote_types(x0.dtype, out.dtype), torch.float32)
    x0, noise, x_t, out = (v.to(dtype) for v in (x0, noise, x_t, out))
    pred, var_values = (out[:, :C], out[:, C:]) if learned_sigma else (out, None)

    if prediction == "eps":
        target = noise
    elif prediction == "v":
        target = schedule.velocity(x0, noise, t)
    else:
        target = schedule.scale_x0(x0, t) if scaled else x0  # an x0-prediction predicts s_t x0
    sq_err = (target - pred) ** 2
    mse = _mean_flat(sq_err)
    if loss_weighting == "min_snr":
        w = broadcast_timesteps(min_snr_weight(schedule, t, prediction, min_snr_gamma), x0).to(x0.dtype).to(x0.device)
        loss = _mean_flat(w * sq_err)
    else:
        loss = mse
    result = {"mse": mse, "x_t": x_t, "target": target, "pred": pred}

    if learned_sigma:
        result["vb"] = vb = variational_bound_terms(schedule, pred.detach(), var_values, x0, x_t, t, prediction)
        loss = loss + vb
    result["loss"] = loss
    return result


def variational_bound_terms(schedule: NoiseSchedule, pred: torch.Tensor, var_values: torch.Tensor, x0: torch.Tensor,
                            x_t: torch.Tensor, t: torch.Tensor, prediction: str = "eps") -> torch.Tensor:
    """The VB term L_{t-1} of IDDPM in bits per dimension, shape (B,).

    This is ``KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))`` for t > 0, and the discretized decoder
    NLL ``-log p(x0 | x_1)`` at t == 0, chosen per element, so per frame for t of shape (B, T).
    ``pred`` is the mean prediction (pass it detached to train only the variance). ``var_values``
    are the learned-range values in [-1, 1].
    """
    true_mean, _, true_log_var = schedule.q_posterior(x0, x_t, t)
    pred_x0 = schedule.to_x0(pred, prediction, x_t, t)
    model_mean, _, _ = schedule.q_posterior(pred_x0, x_t, t)
    model_log_var = schedule.learned_range_log_variance(var_values, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var)
    nll = -discretized_gaussian_log_likelihood(x0, means=model_mean, log_scales=0.5 * model_log_var)
    at_zero = broadcast_timesteps(t == 0, x0).to(x0.device)
    return _mean_flat(torch.where(at_zero, nll, kl)) / math.log(2.0)
