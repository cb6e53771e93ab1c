"""DDPM (ancestral), DDIM and DPM-Solver++(2M) samplers over a respaced schedule.

``sample`` picks ``steps`` timesteps (diffusers' ``timestep_spacing``). It respaces the schedule
to them (IDDPM) and walks the respaced indices from the last to 0, calling
``model_fn(x_t, t)`` with the *original* timesteps as a (B,) long tensor. The noise is drawn
with ``torch.randn(shape, generator=generator, dtype=x.dtype)`` in the same order as a diffusers
scheduler loop draws it: x_T first (unless given), then one draw per step that adds noise.
The same seed therefore reproduces a diffusers trajectory (tests/test_diffusion.py):

- DDPM draws at every step except the last, where the posterior variance is 0, as IDDPM
  does. diffusers draws whenever the original t > 0. The two agree for ``leading`` spacing.
  With ``trailing`` spacing the last step is at t > 0: diffusers adds noise of variance
  1e-20 there (so 1e-10 noise), and with a learned range a noise we do not add.
- DDIM with eta > 0 draws at every step, as diffusers does.

DPM-Solver++(2M) (Lu et al. 2022; diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``) is deterministic
and second order in log-SNR: a multistep update from the model's x0 estimates at this and the
previous step, first order at the first step and at the last (to the clean sample, or with fewer
than 15 steps, ``lower_order_final``). It reaches DDIM-50 quality in about 20 steps.

The final DDIM step goes to alpha_cumprod = 1 (``final_alpha="one"``: IDDPM, and diffusers'
``set_alpha_to_one=True``). ``final_alpha="first"`` goes to ``alphas_cumprod[0]`` instead
(diffusers' ``set_alpha_to_one=False``, LDM / VideoCrafter DDIM).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

from moviola.diffusion.schedule import (PREDICTIONS, NoiseSchedule, TimestepLike, broadcast_timesteps,
                                        convert_prediction, randn, randn_like, spaced_timesteps)

SAMPLERS = ("ddim", "ddpm", "dpm++2m")
ZTSNR_FLOOR = 2.0 ** -24  # DPM-Solver needs log(alpha / sigma) finite: a zero-SNR end is floored here, as diffusers
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample one (respaced) step less noisy
    pred_x0: torch.Tensor  # the model's estimate of x0 at this step (after clipping)


def _as_float64(v: Union[float, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A per-example/per-frame schedule value as float64 on the CPU, shaped to broadcast against x."""
    v = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
    return v if v.dim() == x.dim() else broadcast_timesteps(v, x)


def _cast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(dtype=x.dtype).to(x.device)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_cumprod_t: Union[float, torch.Tensor],
    alpha_cumprod_prev: Union[float, torch.Tensor],
    *,
    eta: float = 0.0,
    prediction: str = "eps",
    generator=None,
    noise: Optional[torch.Tensor] = None,
    clip_x0: Optional[float] = None,
) -> StepOutput:
    """One DDIM update (Song et al. 2021, eq. 12) from noise level ``alpha_cumprod_t`` to ``alpha_cumprod_prev``.

    The alphas are numbers, or tensors of timestep shape ((B,), (B, T)) or already shaped like
    x_t. Pass them in float64: the coefficients are formed in float64 and cast to x_t's dtype.
    ``model_output`` is the mean prediction only (C channels). With ``clip_x0``, the clipped x0
    estimate is clamped to [-clip_x0, clip_x0] and eps is re-derived from it (IDDPM/GLIDE;
    diffusers ``use_clipped_model_output=True``). eta = 0 is deterministic. With eta > 0 a
    noise is drawn (or ``noise`` is used) even when sigma is 0, so draws stay in step with diffusers.
    """
    if model_output.shape != x_t.shape:
        raise ValueError(f"ddim_step takes the mean prediction shaped like x_t {tuple(x_t.shape)}; "
                         f"got {tuple(model_output.shape)} (split off learned-variance channels first)")
    _check_prediction(prediction)
    ab_t, ab_prev = _as_float64(alpha_cumprod_t, x_t), _as_float64(alpha_cumprod_prev, x_t)
    pred_x0 = convert_prediction(model_output, prediction, "x0", x_t, ab_t)
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
        eps = convert_prediction(pred_x0, "x0", "eps", x_t, ab_t)
    else:
        eps = convert_prediction(model_output, prediction, "eps", x_t, ab_t)
    # sigma_t(eta) = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)   (DDIM eq. 16)
    sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)).sqrt()
    dir_coef = (1.0 - ab_prev - sigma ** 2).clamp(min=0.0).sqrt()  # "direction pointing to x_t"
    x_prev = _cast(ab_prev.sqrt(), x_t) * pred_x0 + _cast(dir_coef, x_t) * eps
    if eta > 0:
        if noise is None:
            noise = randn_like(x_t, generator)
        x_prev = x_prev + _cast(sigma, x_t) * noise
    return StepOutput(x_prev, pred_x0)


def dpm_solver_pp_2m_step(
    model_output: torch.Tensor,
    x_s: torch.Tensor,
    alpha_cumprod_s: Union[float, torch.Tensor],
    alpha_cumprod_t: Union[float, torch.Tensor],
    history: Optional[tuple[torch.Tensor, torch.Tensor]],
    *,
    prediction: str = "eps",
    first_order: bool = False,
    clip_x0: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One DPM-Solver++(2M) step from noise level ``alpha_cumprod_s`` to ``alpha_cumprod_t`` (< noise).

    With ``λ = log(α/σ)``, ``h = λ_t − λ_s`` and the x0 estimate D0 (and D1 = (D0 − D0_prev) / r,
    r = (λ_s − λ_prev) / h, from the previous step in ``history``)::

        x_t = (σ_t / σ_s) x_s − α_t (e^{−h} − 1) (D0 + D1 / 2)      (D1 dropped when first order)

    A step to σ_t = 0 returns the x0 estimate. Returns ``(x_t, x0 estimate, new history)``.
    """
    if model_output.shape != x_s.shape:
        raise ValueError(f"dpm_solver_pp_2m_step takes the mean prediction shaped like x {tuple(x_s.shape)}; "
                         f"got {tuple(model_output.shape)}")
    _check_prediction(prediction)
    ab_s = _as_float64(alpha_cumprod_s, x_s).clamp(min=ZTSNR_FLOOR)
    ab_t = _as_float64(alpha_cumprod_t, x_s)
    ab_t = torch.where(ab_t < 1, ab_t.clamp(min=ZTSNR_FLOOR), ab_t)
    pred_x0 = convert_prediction(model_output, prediction, "x0", x_s, ab_s)
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
    alpha_s, sigma_s = ab_s.sqrt(), (1 - ab_s).sqrt()
    alpha_t, sigma_t = ab_t.sqrt(), (1 - ab_t).sqrt()
    lam_s = alpha_s.log() - sigma_s.log()
    if bool((sigma_t == 0).all()):  # the last step to the clean sample
        return pred_x0, pred_x0, (pred_x0, lam_s)
    lam_t = alpha_t.log() - sigma_t.log()
    h = lam_t - lam_s
    d = pred_x0
    if history is not None and not first_order:
        prev_x0, lam_prev = history
        r = (lam_s - lam_prev) / h
        d = pred_x0 + _cast(0.5 / r, x_s) * (pred_x0 - prev_x0)
    x_t = _cast(sigma_t / sigma_s, x_s) * x_s - _cast(alpha_t * torch.expm1(-h), x_s) * d
    return x_t, pred_x0, (pred_x0, lam_s)


def ddpm_step(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: TimestepLike,
    *,
    prediction: str = "eps",
    learned_sigma: bool = False,
    generator=None,
    noise: Optional[torch.Tensor] = None,
    clip_x0: Optional[float] = None,
) -> StepOutput:
    """One ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)`` at index ``t`` of ``schedule`` (typically a respaced one).

    ``t`` is an int, (B,) or (B, T). The variance is the posterior variance (``fixed_small``), or
    with ``learned_sigma`` IDDPM's learned range read from the last C channels of
    ``model_output``. No noise is added where t == 0. A noise is drawn (unless ``noise`` is
    given) only if some t > 0.
    """
    _check_prediction(prediction)
    C = x_t.shape[1]
    want = 2 * C if learned_sigma else C
    if model_output.shape[1] != want or model_output.shape[2:] != x_t.shape[2:]:
        raise ValueError(f"model output {tuple(model_output.shape)} does not fit x_t {tuple(x_t.shape)} "
                         f"(expected {want} channels{' with learned sigma' if learned_sigma else ''})")
    pred = model_output[:, :C]
    pred_x0 = schedule.to_x0(pred, prediction, x_t, t)
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
    mean, _, log_var = schedule.q_posterior(pred_x0, x_t, t)
    if learned_sigma:
        log_var = schedule.learned_range_log_variance(model_output[:, C:], t)
    t_cpu = torch.as_tensor(t).cpu()
    if not bool((t_cpu > 0).any()):
        return StepOutput(mean, pred_x0)
    if noise is None:
        noise = randn_like(x_t, generator)
    nonzero = _cast(broadcast_timesteps((t_cpu > 0).to(torch.float64), x_t), x_t)
    return StepOutput(mean + nonzero * torch.exp(0.5 * log_var) * noise, pred_x0)


def sample(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    prediction: str = "eps",
    learned_sigma: bool = False,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    timesteps: Optional[Sequence[int]] = None,
    final_alpha: str = "one",
    generator=None,
    x_T: Optional[torch.Tensor] = None,
    clip_x0: Optional[float] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    progress: bool = False,
    callback: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Run a DDPM or DDIM chain from noise to x0 and return x0 (shape ``shape``).

    Args:
        model_fn: ``model_fn(x_t, t) -> prediction``. t is a (B,) long tensor of original timesteps,
            and the prediction has 2C channels when ``learned_sigma`` (see ``guidance.guided_model_fn``).
        schedule: the training schedule (usually not respaced; respacing composes if it is).
        steps, timestep_spacing, steps_offset: which timesteps to visit (``schedule.spaced_timesteps``).
            ``timesteps`` overrides them with an explicit list, e.g. a truncated one for SDEdit.
        eta: DDIM noise; 0 is deterministic, 1 matches DDPM's posterior variance.
        final_alpha: where the last DDIM step lands, ``"one"`` (clean) or ``"first"`` (``alphas_cumprod[0]``).
        x_T: the starting sample (image-to-video, SDEdit); drawn from ``generator`` when None.
        clip_x0: clamp each x0 estimate to [-clip_x0, clip_x0] (None: no clipping, as in latent diffusion).
        callback: ``callback(i, t, x, pred_x0)`` after step i (original timestep t), x being the new sample.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if final_alpha not in ("one", "first"):
        raise ValueError(f"final_alpha must be 'one' or 'first'; got {final_alpha!r}")
    _check_prediction(prediction)
    if timesteps is None:
        timesteps = spaced_timesteps(steps, schedule.num_timesteps, timestep_spacing, steps_offset)
    sub = schedule.respaced(timesteps)
    if x_T is None:
        x = randn(shape, generator=generator, dtype=dtype, device=device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T
    B, C = x.shape[0], x.shape[1]
    final_ab = torch.ones((), dtype=torch.float64) if final_alpha == "one" else schedule.alphas_cumprod[0]

    indices = list(range(sub.num_timesteps))[::-1]
    history = None  # DPM-Solver++: (x0 estimate, lambda) of the previous step
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc=f"{sampler} sampling")
    for i, idx in enumerate(indices):
        t_model = int(sub.timestep_map[idx])
        out = model_fn(x, torch.full((B,), t_model, dtype=torch.long, device=x.device))
        if sampler == "ddpm":
            x, pred_x0 = ddpm_step(sub, out, x, idx, prediction=prediction, learned_sigma=learned_sigma,
                                   generator=generator, clip_x0=clip_x0)
        elif sampler == "dpm++2m":
            mean = out[:, :C] if learned_sigma else out
            ab_next = sub.alphas_cumprod[idx - 1] if idx > 0 else final_ab
            first_order = i == 0 or (idx == 0 and len(indices) < 15)
            x, pred_x0, history = dpm_solver_pp_2m_step(mean, x, sub.alphas_cumprod[idx], ab_next, history,
                                                        prediction=prediction, first_order=first_order,
                                                        clip_x0=clip_x0)
        else:
            mean = out[:, :C] if learned_sigma else out
            ab_prev = sub.alphas_cumprod[idx - 1] if idx > 0 else final_ab
            x, pred_x0 = ddim_step(mean, x, sub.alphas_cumprod[idx], ab_prev, eta=eta, prediction=prediction,
                                   generator=generator, clip_x0=clip_x0)
        if callback is not None:
            callback(i, t_model, x, pred_x0)
    return x
