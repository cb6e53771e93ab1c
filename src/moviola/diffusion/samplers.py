"""DDPM (ancestral), DDIM and DPM-Solver++(2M) samplers that walk a timestep plan.

A plan (``plans.py``) is a ``(steps, T)`` long tensor of noise levels, one per frame: at step i
every frame goes from its level in row i to its level in row i + 1, and after the last row to the
clean sample. ``sample`` builds the ordinary plan (the same level across each row) from
``steps`` and diffusers' ``timestep_spacing``, or takes one (``plan=``: FIFO-Diffusion's diagonal,
clean context frames, diffusion forcing). The model is called as ``model_fn(x_t, t)`` with the
*original* timesteps: a (B,) long tensor when every frame of the row shares a level (ordinary
sampling, exactly as before), else (B, T); a ``CLEAN`` frame is shown t = 0. The step arithmetic
uses each frame's own alphas. A frame whose level does not change at a step (a clean frame, a
frame waiting its turn) is left exactly as it is.

The noise is drawn with ``torch.randn(shape, generator=generator, dtype=x.dtype)`` in the same
order as a diffusers scheduler loop draws it: x_T first (unless given), then one draw per step
that adds noise. The same seed therefore reproduces a diffusers trajectory (tests/test_diffusion.py):

- DDPM draws at every step where some frame moves to a noisy level, so for an ordinary plan at
  every step except the last, where the posterior variance is 0, as IDDPM does. diffusers draws
  whenever the original t > 0. The two agree for ``leading`` spacing. With ``trailing`` spacing
  the last step is at t > 0: diffusers adds noise of variance 1e-20 there (so 1e-10 noise), and
  with a learned range a noise we do not add.
- DDIM with eta > 0 draws at every step, as diffusers does.

DDPM steps through the posterior ``q(x_s | x_t, x0)`` between a frame's two consecutive levels
(``posterior_step``: ``beta = 1 - ab_t / ab_s``). For an ordinary plan this is exactly IDDPM's
respaced posterior; in a per-frame plan each frame gets the posterior of its own two levels.

DPM-Solver++(2M) (Lu et al. 2022; diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``) is deterministic
and second order in log-SNR: a multistep update from the model's x0 estimates at this and the
previous step, first order at the first step and at the last (to the clean sample, or with fewer
than 15 steps, ``lower_order_final``). It reaches DDIM-50 quality in about 20 steps. In a
per-frame plan the history (previous x0 estimate and lambda) is kept per frame, and "first" and
"last" are each frame's own first move and move to the clean sample.

The final DDIM / DPM-Solver step goes to alpha_cumprod = 1 (``final_alpha="one"``: IDDPM, and
diffusers' ``set_alpha_to_one=True``). ``final_alpha="first"`` goes to ``alphas_cumprod[0]`` instead
(diffusers' ``set_alpha_to_one=False``, LDM / VideoCrafter DDIM). DDPM always ends at 1.

The x0 scale (VideoCrafter's ``use_scale``; ``schedule.x0_scale``, schedule.py): the model's x0 estimate at level
t is ``s_t x0``, so a step divides it by ``s_t`` and re-noises x0 at the target level's scale: DDIM (the official
``DDIMSampler.p_sample_ddim``, lvdm/models/samplers/ddim.py)::

    x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) / s_t
    x_s = sqrt(ab_s) s_s x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z      (sigma: the unscaled DDIM eta formula)

The clean target's scale is 1 with ``final_alpha="one"`` (the data itself) and ``x0_scale[0]`` with ``"first"``
(the official ``ddim_scale_arr_prev[0] = scale_arr[0]``). DPM-Solver++(2M) solves the same process with
``alpha_t = sqrt(ab_t) s_t`` (its first-order step is the DDIM step above at eta 0). DDPM is refused: the
official code defines no ancestral step for it (its ``p_sample`` ignores the scale). ``pred_x0`` (callback,
self-conditioning's state) is x0 itself, divided by ``s_t``.

State: a model function that takes a parameter named ``state`` is called as
``model_fn(x_t, t, state=state)`` with a :class:`SamplerState`: the step, the row's levels, the
previous step's x0 estimate (self-conditioning, W.A.L.T) and a dict it may keep its own things in.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

from moviola.diffusion.plans import CLEAN, plan_targets, uniform_plan, validate_plan
from moviola.diffusion.schedule import (PREDICTIONS, NoiseSchedule, TimestepLike, broadcast_timesteps,
                                        convert_prediction, randn, randn_like, spaced_timesteps)

NO_SCALED_DDPM = ("the ddpm sampler has no step for an x0-scaled process (diffusion.x0_scale, VideoCrafter's "
                  "use_scale): the official code defines only DDIM's; use sampler ddim (eta 1 is the official "
                  "stochastic sampler) or dpm++2m")
ZTSNR_FLOOR = 2.0 ** -24  # DPM-Solver needs log(alpha / sigma) finite: a zero-SNR end is floored here, as diffusers
ModelFn = Callable[..., torch.Tensor]  # model_fn(x_t, t), or model_fn(x_t, t, state=SamplerState)
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # noise_fn(step, x): a standard normal draw shaped like x


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample one step less noisy
    pred_x0: torch.Tensor  # the model's estimate of x0 at this step (after clipping)


@dataclass
class SamplerState:
    """What a model function with a ``state`` parameter is given at every step (one object for the whole walk)."""
    step: int = 0  # the plan row being evaluated
    levels: Optional[torch.Tensor] = None  # (T,) that row's levels (CLEAN = -1)
    pred_x0: Optional[torch.Tensor] = None  # the previous step's x0 estimate (a clean frame: itself); None at first
    memory: dict = field(default_factory=dict)  # the model function's own, kept across steps


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
    scale_t: Union[float, torch.Tensor, None] = None,
    scale_prev: Union[float, torch.Tensor, None] = None,
) -> StepOutput:
    """One DDIM update (Song et al. 2021, eq. 12) from noise level ``alpha_cumprod_t`` to ``alpha_cumprod_prev``.

    The alphas are numbers, or tensors of timestep shape ((B,), (B, T)) or already shaped like
    x_t. Pass them in float64: the coefficients are formed in float64 and cast to x_t's dtype.
    ``model_output`` is the mean prediction only (C channels). With ``clip_x0``, the clipped x0
    estimate is clamped to [-clip_x0, clip_x0] and eps is re-derived from it (IDDPM/GLIDE;
    diffusers ``use_clipped_model_output=True``). eta = 0 is deterministic. With eta > 0 a
    noise is drawn (or ``noise`` is used) even when sigma is 0, so draws stay in step with diffusers.

    ``scale_t``, ``scale_prev``: the x0 scales of the two levels (VideoCrafter's ``use_scale``, module docstring),
    shaped as the alphas; both None (the default) is the ordinary step. The returned x0 estimate is then x0
    itself (the model's estimate divided by ``scale_t``); ``clip_x0`` clamps that.
    """
    if (scale_t is None) != (scale_prev is None):
        raise ValueError("ddim_step takes both scale_t and scale_prev (the x0 scale of each level) or neither")
    if model_output.shape != x_t.shape:
        raise ValueError(f"ddim_step takes the mean prediction shaped like x_t {tuple(x_t.shape)}; "
                         f"got {tuple(model_output.shape)} (split off learned-variance channels first)")
    _check_prediction(prediction)
    ab_t, ab_prev = _as_float64(alpha_cumprod_t, x_t), _as_float64(alpha_cumprod_prev, x_t)
    pred_x0 = convert_prediction(model_output, prediction, "x0", x_t, ab_t)
    signal = ab_prev.sqrt()  # what multiplies x0 at the target level
    if scale_t is not None:
        s_t, s_prev = _as_float64(scale_t, x_t), _as_float64(scale_prev, x_t)
        pred_x0 = pred_x0 / _cast(s_t, x_t)  # the model estimates s_t x0 (VideoCrafter: pred_x0 /= scale_t)
        signal = signal * s_prev
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
        scaled = pred_x0 if scale_t is None else pred_x0 * _cast(s_t, x_t)
        eps = convert_prediction(scaled, "x0", "eps", x_t, ab_t)
    else:
        eps = convert_prediction(model_output, prediction, "eps", x_t, ab_t)
    # sigma_t(eta) = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)   (DDIM eq. 16)
    sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)).sqrt()
    dir_coef = (1.0 - ab_prev - sigma ** 2).clamp(min=0.0).sqrt()  # "direction pointing to x_t"
    x_prev = _cast(signal, x_t) * pred_x0 + _cast(dir_coef, x_t) * eps
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
    first_order: Union[bool, torch.Tensor] = False,
    clip_x0: Optional[float] = None,
    scale_s: Union[float, torch.Tensor, None] = None,
    scale_t: Union[float, torch.Tensor, None] = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One DPM-Solver++(2M) step from noise level ``alpha_cumprod_s`` to ``alpha_cumprod_t`` (< noise).

    With ``λ = log(α/σ)``, ``h = λ_t − λ_s`` and the x0 estimate D0 (and D1 = (D0 − D0_prev) / r,
    r = (λ_s − λ_prev) / h, from the previous step in ``history``)::

        x_t = (σ_t / σ_s) x_s − α_t (e^{−h} − 1) (D0 + D1 / 2)      (D1 dropped when first order)

    The alphas (and the history's λ) are numbers or tensors that broadcast against x, so each
    frame may have its own; ``first_order`` is a bool or a bool tensor that broadcasts against x.
    Where σ_t = 0 (a step to the clean sample) the result is the x0 estimate.
    ``scale_s``, ``scale_t``: the x0 scales of the two levels (VideoCrafter's ``use_scale``): the model's estimate
    is divided by ``scale_s`` and α is ``sqrt(ab) · scale`` throughout (the process ``α x0 + σ ε``); both None
    is the ordinary step.
    Returns ``(x_t, x0 estimate, new history)``.
    """
    if (scale_s is None) != (scale_t is None):
        raise ValueError("dpm_solver_pp_2m_step takes both scale_s and scale_t (the x0 scale of each level) or neither")
    if model_output.shape != x_s.shape:
        raise ValueError(f"dpm_solver_pp_2m_step takes the mean prediction shaped like x {tuple(x_s.shape)}; "
                         f"got {tuple(model_output.shape)}")
    _check_prediction(prediction)
    ab_s = _as_float64(alpha_cumprod_s, x_s).clamp(min=ZTSNR_FLOOR)
    ab_t = _as_float64(alpha_cumprod_t, x_s)
    ab_t = torch.where(ab_t < 1, ab_t.clamp(min=ZTSNR_FLOOR), ab_t)
    pred_x0 = convert_prediction(model_output, prediction, "x0", x_s, ab_s)
    if scale_s is not None:
        pred_x0 = pred_x0 / _cast(_as_float64(scale_s, x_s), x_s)  # the model estimates s_s x0
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
    alpha_s, sigma_s = ab_s.sqrt(), (1 - ab_s).sqrt()
    alpha_t, sigma_t = ab_t.sqrt(), (1 - ab_t).sqrt()
    if scale_s is not None:
        alpha_s, alpha_t = alpha_s * _as_float64(scale_s, x_s), alpha_t * _as_float64(scale_t, x_s)
    lam_s = alpha_s.log() - sigma_s.log()
    if bool((sigma_t == 0).all()):  # the last step to the clean sample
        return pred_x0, pred_x0, (pred_x0, lam_s)
    lam_t = alpha_t.log() - sigma_t.log()
    h = lam_t - lam_s
    d = pred_x0
    if history is not None and first_order is not True:
        prev_x0, lam_prev = history
        r = (lam_s - _as_float64(lam_prev, x_s)) / h
        d2 = pred_x0 + _cast(0.5 / r, x_s) * (pred_x0 - prev_x0)
        d = d2 if first_order is False else torch.where(torch.as_tensor(first_order).to(x_s.device), pred_x0, d2)
    x_t = _cast(sigma_t / sigma_s, x_s) * x_s - _cast(alpha_t * torch.expm1(-h), x_s) * d
    if bool((sigma_t == 0).any()):  # some frames step to the clean sample (their lambda_t is infinite)
        x_t = torch.where((sigma_t == 0).to(x_s.device), pred_x0, x_t)
    return x_t, pred_x0, (pred_x0, lam_s)


def posterior_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_cumprod_t: Union[float, torch.Tensor],
    alpha_cumprod_s: Union[float, torch.Tensor],
    *,
    prediction: str = "eps",
    learned_sigma: bool = False,
    noise: Optional[torch.Tensor] = None,
    clip_x0: Optional[float] = None,
) -> StepOutput:
    """One ancestral step ``x_s ~ q(x_s | x_t, x0)`` from level ``alpha_cumprod_t`` to a less noisy ``alpha_cumprod_s``.

    x0 is the model's estimate. The posterior is DDPM's (eq. 6-7) over the two levels, with
    ``beta = 1 - ab_t / ab_s`` (IDDPM respacing): consecutive entries of a respaced schedule give
    exactly its posterior, and per-frame alphas ((B, T) or shaped like x_t) give each frame the
    posterior between its own two levels. The variance is the posterior variance
    (``fixed_small``), or with ``learned_sigma`` IDDPM's learned range between it and beta, read
    from the last C channels of ``model_output``. ``noise`` is the standard normal draw; it is
    added where ``ab_s < 1``, and without it the step returns the posterior mean (the caller
    decides whether to draw, see ``ddpm_step`` and ``sample``).
    """
    _check_prediction(prediction)
    C = x_t.shape[1]
    want = 2 * C if learned_sigma else C
    if model_output.shape[1] != want or model_output.shape[2:] != x_t.shape[2:]:
        raise ValueError(f"model output {tuple(model_output.shape)} does not fit x_t {tuple(x_t.shape)} "
                         f"(expected {want} channels{' with learned sigma' if learned_sigma else ''})")
    ab_t, ab_s = _as_float64(alpha_cumprod_t, x_t), _as_float64(alpha_cumprod_s, x_t)
    pred_x0 = convert_prediction(model_output[:, :C], prediction, "x0", x_t, ab_t)
    if clip_x0 is not None:
        pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
    # the same operations, in the same order, as NoiseSchedule's posterior arrays (bit-identical to them)
    beta = 1.0 - ab_t / ab_s
    coef1 = beta * ab_s.sqrt() / (1.0 - ab_t)
    coef2 = (1.0 - ab_s) * (1.0 - beta).sqrt() / (1.0 - ab_t)
    mean = _cast(coef1, x_t) * pred_x0 + _cast(coef2, x_t) * x_t
    if noise is None:
        return StepOutput(mean, pred_x0)
    var = beta * (1.0 - ab_s) / (1.0 - ab_t)
    # a step to ab_s = 1 has variance 0 and gets no noise; log(beta) there keeps the learned range finite
    log_var = _cast(torch.where(var > 0, var, beta).log(), x_t)
    if learned_sigma:
        frac = (model_output[:, C:] + 1) / 2
        log_var = frac * _cast(beta.log(), x_t) + (1 - frac) * log_var
    nonzero = _cast((ab_s < 1).to(torch.float64), x_t)
    return StepOutput(mean + nonzero * torch.exp(0.5 * log_var) * noise, pred_x0)


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

    ``t`` is an int, (B,) or (B, T); the step goes from ``alphas_cumprod[t]`` to
    ``alphas_cumprod_prev[t]`` (see ``posterior_step``; its beta, ``1 - ab_t / ab_prev``, is the
    schedule's beta up to float64 rounding). No noise is added where t == 0. A noise is drawn
    (unless ``noise`` is given) only if some t > 0. A schedule with an x0 scale is refused (module docstring).
    """
    if getattr(schedule, "x0_scale", None) is not None:
        raise ValueError(NO_SCALED_DDPM)
    ab_t = schedule._gather(schedule.alphas_cumprod, t)
    ab_s = schedule._gather(schedule.alphas_cumprod_prev, t)
    if noise is None and bool((torch.as_tensor(t).cpu() > 0).any()):
        noise = randn_like(x_t, generator)
    return posterior_step(model_output, x_t, ab_t, ab_s, prediction=prediction, learned_sigma=learned_sigma,
                          noise=noise, clip_x0=clip_x0)


class _Walk:
    """One walk of a plan: the per-frame schedule values of each step, the noise, and the samplers' memory."""

    def __init__(self, schedule: NoiseSchedule, plan: torch.Tensor, x: torch.Tensor, *, eta: float,
                 prediction: str, learned_sigma: bool, final_alpha: str, clip_x0: Optional[float],
                 generator, noise_fn: Optional[NoiseFn]):
        self.schedule, self.plan, self.targets = schedule, plan, plan_targets(plan)
        self.eta, self.prediction, self.learned_sigma, self.clip_x0 = eta, prediction, learned_sigma, clip_x0
        self.generator, self.noise_fn, self.channels = generator, noise_fn, x.shape[1]
        self.final_ab = torch.ones((), dtype=torch.float64) if final_alpha == "one" else schedule.alphas_cumprod[0]
        self.moves = (plan != self.targets).sum(dim=0)  # (T,) how many steps each frame takes
        self.x0_scale = getattr(schedule, "x0_scale", None)  # None: the ordinary process
        if self.x0_scale is not None:  # a clean target's scale: the data (1), or level 0's (the official DDIM)
            self.final_scale = torch.ones((), dtype=torch.float64) if final_alpha == "one" else self.x0_scale[0]
        self.history: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # DPM-Solver++, per frame

    @staticmethod
    def per_frame(v: torch.Tensor) -> torch.Tensor:
        """(T,) values as one number () when they are all equal (ordinary sampling: the arithmetic of a
        single level, bit for bit), else shaped (1, 1, T, 1, 1) to broadcast against (B, C, T, H, W)."""
        if bool((v == v[0]).all()):
            return v[0]
        return v.view(1, 1, -1, 1, 1)  # (T,) -> (1, 1, T, 1, 1)

    def alphas(self, levels: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """alpha_cumprod of each frame's level (float64); ``clean`` for CLEAN frames."""
        ab = self.schedule.alphas_cumprod[levels.clamp(min=0)]
        return self.per_frame(torch.where(levels == CLEAN, clean, ab))

    def scales(self, levels: torch.Tensor) -> torch.Tensor:
        """x0_scale of each frame's level (float64); ``final_scale`` for CLEAN frames (only with an x0 scale)."""
        s = self.x0_scale[levels.clamp(min=0)]
        return self.per_frame(torch.where(levels == CLEAN, self.final_scale, s))

    def model_timesteps(self, levels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the model is called with: (B,) when the row shares one level (as ordinary sampling always
        did, bit for bit), else (B, T); the original timesteps, 0 for a CLEAN frame."""
        t = self.schedule.timestep_map[levels.clamp(min=0)]  # (T,)
        if bool((t == t[0]).all()):
            return torch.full((x.shape[0],), int(t[0]), dtype=torch.long, device=x.device)
        return t.to(x.device)[None].repeat(x.shape[0], 1)  # (T,) -> (B, T)

    def noise(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.noise_fn(i, x) if self.noise_fn is not None else randn_like(x, self.generator)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, :self.channels] if self.learned_sigma else out


def _frames_where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` on the frames where the (T,) ``mask`` holds, ``b`` elsewhere."""
    if bool(mask.all()):
        return a
    if not bool(mask.any()):
        return b
    return torch.where(mask.to(a.device).view(1, 1, -1, 1, 1), a, b)  # (T,) -> (1, 1, T, 1, 1)


def _ddim(w: _Walk, i: int, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = w.noise(i, x) if w.eta > 0 else None
    scales = {} if w.x0_scale is None else dict(scale_t=w.scales(w.plan[i]), scale_prev=w.scales(w.targets[i]))
    return ddim_step(w.mean(out), x, w.alphas(w.plan[i], w.final_ab), w.alphas(w.targets[i], w.final_ab),
                     eta=w.eta, prediction=w.prediction, noise=noise, clip_x0=w.clip_x0, **scales)


def _ddpm(w: _Walk, i: int, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, s = w.plan[i], w.targets[i]
    one = torch.ones((), dtype=torch.float64)  # DDPM ends at the clean sample whatever final_alpha says
    noisy = (t != s) & (s != CLEAN)  # a draw only for a step that adds noise somewhere
    noise = w.noise(i, x) if bool(noisy.any()) else None
    return posterior_step(out, x, w.alphas(t, one), w.alphas(s, one), prediction=w.prediction,
                          learned_sigma=w.learned_sigma, noise=noise, clip_x0=w.clip_x0)


def _dpm_solver_pp_2m(w: _Walk, i: int, out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, s = w.plan[i], w.targets[i]
    moving = t != s
    # first order at a frame's first move, and at its move to the clean sample when it takes < 15 steps
    first = (s == CLEAN) & (w.moves < 15)
    if w.history is None:
        first = torch.ones_like(first)
        history = None
    else:
        prev_x0, lam_prev, started = w.history
        first = first | ~started
        history = (prev_x0, w.per_frame(lam_prev))
    first_order = bool(first[0]) if bool((first == first[0]).all()) else first.view(1, 1, -1, 1, 1)
    scales = {} if w.x0_scale is None else dict(scale_s=w.scales(t), scale_t=w.scales(s))
    x_new, pred_x0, (x0_now, lam_now) = dpm_solver_pp_2m_step(
        w.mean(out), x, w.alphas(t, w.final_ab), w.alphas(s, w.final_ab), history,
        prediction=w.prediction, first_order=first_order, clip_x0=w.clip_x0, **scales)
    lam_now = lam_now.reshape(-1).expand(t.shape[0])  # () or (1, 1, T, 1, 1) -> (T,)
    if w.history is None:
        w.history = (x0_now, lam_now.clone(), moving)
    else:  # only the frames that moved get a new history
        w.history = (_frames_where(moving, x0_now, prev_x0), torch.where(moving, lam_now, lam_prev), started | moving)
    return x_new, pred_x0


SamplerRule = Callable[[_Walk, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SAMPLERS: dict[str, SamplerRule] = {"ddim": _ddim, "ddpm": _ddpm, "dpm++2m": _dpm_solver_pp_2m}  # the one registry


def _takes_state(model_fn: ModelFn) -> bool:
    """Whether ``model_fn`` declares a parameter named ``state`` (then it is given a SamplerState)."""
    try:
        param = inspect.signature(model_fn).parameters.get("state")
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


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
    plan: Optional[torch.Tensor] = None,
    final_alpha: str = "one",
    generator=None,
    x_T: Optional[torch.Tensor] = None,
    clip_x0: Optional[float] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    progress: bool = False,
    callback: Optional[Callable[[int, Union[int, torch.Tensor], torch.Tensor, torch.Tensor], None]] = None,
    noise_fn: Optional[NoiseFn] = None,
) -> torch.Tensor:
    """Walk a timestep plan from noise to x0 with a DDPM, DDIM or DPM-Solver++(2M) sampler; return x0 (``shape``).

    Args:
        model_fn: ``model_fn(x_t, t) -> prediction``, t a (B,) or (B, T) long tensor of original timesteps
            (module docstring); the prediction has 2C channels when ``learned_sigma`` (see
            ``guidance.guided_model_fn``). With a ``state`` parameter it also gets a :class:`SamplerState`.
        schedule: the training schedule (usually not respaced; plan levels are its indices).
        sampler: a name in ``SAMPLERS`` ("ddim", "ddpm", "dpm++2m").
        steps, timestep_spacing, steps_offset: which timesteps to visit (``schedule.spaced_timesteps``).
            ``timesteps`` overrides them with an explicit list, e.g. a truncated one for SDEdit.
        plan: a ``(steps, T)`` timestep plan (``plans.py``) instead of the above; T is ``shape[2]`` (1 for 4-D).
        eta: DDIM noise; 0 is deterministic, 1 matches DDPM's posterior variance.
        final_alpha: where the last DDIM / DPM-Solver step lands, ``"one"`` (clean) or ``"first"`` (``alphas_cumprod[0]``).
        x_T: the starting sample (image-to-video, SDEdit, a plan's first row); drawn from ``generator`` when None.
        clip_x0: clamp each x0 estimate to [-clip_x0, clip_x0] (None: no clipping, as in latent diffusion).
        callback: ``callback(i, t, x, pred_x0)`` after step i, x being the new sample; t is the original
            timestep (an int) when the row shares one level, else the row's (T,) levels.
        noise_fn: ``noise_fn(i, x)`` gives the noise of step i instead of drawing it from ``generator``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if sampler == "ddpm" and getattr(schedule, "x0_scale", None) is not None:
        raise ValueError(NO_SCALED_DDPM)
    if final_alpha not in ("one", "first"):
        raise ValueError(f"final_alpha must be 'one' or 'first'; got {final_alpha!r}")
    _check_prediction(prediction)
    frames = shape[2] if len(shape) == 5 else 1
    if plan is None:
        if timesteps is None:
            timesteps = spaced_timesteps(steps, schedule.num_timesteps, timestep_spacing, steps_offset)
        plan = uniform_plan(sorted({int(k) for k in timesteps}, reverse=True), frames)  # as respacing: sorted, unique
    elif timesteps is not None:
        raise ValueError("give timesteps or a plan, not both")
    plan = validate_plan(plan, schedule.num_timesteps, frames)
    if x_T is None:
        x = randn(shape, generator=generator, dtype=dtype, device=device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T
    walk = _Walk(schedule, plan, x, eta=eta, prediction=prediction, learned_sigma=learned_sigma,
                 final_alpha=final_alpha, clip_x0=clip_x0, generator=generator, noise_fn=noise_fn)
    return _run(model_fn, walk, x, SAMPLERS[sampler], f"{sampler} sampling" if progress else None, callback)


def _row(model_fn: ModelFn, walk: _Walk, i: int, x: torch.Tensor, rule: SamplerRule, state: SamplerState,
         stateful: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plan row i: one model call and one step. Returns (x after the step, its x0 estimate, the model's t)."""
    levels = walk.plan[i]
    state.step, state.levels = i, levels
    t = walk.model_timesteps(levels, x)
    out = model_fn(x, t, state=state) if stateful else model_fn(x, t)
    x_new, pred_x0 = rule(walk, i, out, x)
    x = _frames_where(levels != walk.targets[i], x_new, x)  # a frame that keeps its level is left as it is
    pred_x0 = _frames_where(levels == CLEAN, x, pred_x0)  # a clean frame is its own x0
    state.pred_x0 = pred_x0
    return x, pred_x0, t


def _run(model_fn: ModelFn, walk: _Walk, x: torch.Tensor, rule: SamplerRule, progress: Optional[str],
         callback) -> torch.Tensor:
    """The sampling loop: one model call and one step per plan row."""
    state, stateful = SamplerState(), _takes_state(model_fn)
    rows = range(walk.plan.shape[0])
    if progress:
        from tqdm.auto import tqdm
        rows = tqdm(rows, desc=progress)
    for i in rows:
        x, pred_x0, t = _row(model_fn, walk, i, x, rule, state, stateful)
        if callback is not None:
            callback(i, int(t[0]) if t.dim() == 1 else walk.plan[i], x, pred_x0)
    return x


ONE_STEP_SAMPLERS = ("ddim", "ddpm")  # plan_step: the single-step rules (DPM-Solver++(2M) needs a walk's history)


def plan_step(
    model_fn: ModelFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    levels: torch.Tensor,
    targets: torch.Tensor,
    *,
    sampler: str = "ddim",
    eta: float = 0.0,
    prediction: str = "eps",
    learned_sigma: bool = False,
    final_alpha: str = "one",
    clip_x0: Optional[float] = None,
    generator=None,
    state: Optional[SamplerState] = None,
) -> StepOutput:
    """One row of a plan on its own: every frame of x (B, C, T, H, W) from its level in ``levels`` (T,) to its
    level in ``targets`` (T,), with one call of ``model_fn`` (and ``state``, when it takes one).

    Levels are schedule indices or ``CLEAN``, as in a plan; a frame whose target equals its level is left
    exactly as it is, and a CLEAN frame is its own x0 estimate. This is the step :func:`sample` takes at each
    row, for loops that build their rows as they go (FIFO-Diffusion's queue, pipelines/fifo.py): a walk of
    ``plan`` one row at a time through here gives exactly what ``sample(plan=plan)`` gives. DDIM and DDPM only:
    DPM-Solver++(2M) keeps a history per frame that a caller reshuffling its frames could not keep in step.
    """
    if sampler not in ONE_STEP_SAMPLERS:
        raise ValueError(f"plan_step takes the single-step samplers {list(ONE_STEP_SAMPLERS)}, got {sampler!r} "
                         "(dpm++2m is multistep: its history follows one walk of a whole plan)")
    if sampler == "ddpm" and getattr(schedule, "x0_scale", None) is not None:
        raise ValueError(NO_SCALED_DDPM)
    if final_alpha not in ("one", "first"):
        raise ValueError(f"final_alpha must be 'one' or 'first'; got {final_alpha!r}")
    _check_prediction(prediction)
    levels, targets = (torch.as_tensor(v, dtype=torch.long).cpu() for v in (levels, targets))
    if x.dim() != 5 or levels.shape != (x.shape[2],) or targets.shape != levels.shape:
        raise ValueError(f"plan_step takes x (B, C, T, H, W) with (T,) levels and targets; got x {tuple(x.shape)}, "
                         f"levels {tuple(levels.shape)}, targets {tuple(targets.shape)}")
    if bool((targets > levels).any()) or bool((levels < CLEAN).any()) or bool((levels >= schedule.num_timesteps).any()):
        raise ValueError(f"plan_step levels are schedule indices or CLEAN and never rise; got {levels.tolist()} -> "
                         f"{targets.tolist()}")
    walk = _Walk(schedule, torch.stack([levels, targets]), x, eta=eta, prediction=prediction,
                 learned_sigma=learned_sigma, final_alpha=final_alpha, clip_x0=clip_x0, generator=generator,
                 noise_fn=None)
    stateful = _takes_state(model_fn)
    x, pred_x0, _ = _row(model_fn, walk, 0, x, SAMPLERS[sampler], SamplerState() if state is None else state, stateful)
    return StepOutput(x, pred_x0)
