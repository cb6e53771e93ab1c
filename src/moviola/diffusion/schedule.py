"""Noise schedules: betas, the forward process q(x_t | x0), and eps / v / x0 conversions.

Every schedule quantity is computed and stored in float64 on the CPU. It is gathered at the
requested timesteps, combined in float64, and only then cast to the dtype and device of the
tensor it multiplies. A bf16 or fp32 sample therefore never sees a schedule rounded by a
float32 cumulative product. Gathering on the CPU also keeps float64 away from MPS, which
has no float64.

Timesteps index the schedule (integers in ``[0, num_timesteps)``). They are either ``(B,)``,
one noise level per example, or ``(B, T)``, one noise level per frame of a ``(B, C, T, H, W)``
tensor (see :func:`broadcast_timesteps`).

Zero terminal SNR (``alphas_cumprod[-1] == 0``): at the last timestep ``x_t`` is pure noise, so
an eps prediction carries no information about x0. ``eps -> x0`` and ``eps -> v`` divide by
``sqrt(alpha_cumprod) == 0`` there and give inf/NaN. This is a property of the
parameterization, not a bug, so use v- or x0-prediction with zero terminal SNR, as Lin et
al. 2023 do. ``v -> x0`` (``x0 = -v``) and ``v -> eps`` (``eps = x_t``) are finite everywhere.
So are the DDPM and DDIM steps and the posterior.

The x0 scale (VideoCrafter's ``use_scale``, ``diffusion.x0_scale``): the forward process multiplies x0 by
``s_t`` (``x0_scale[t]``) as well, ``x_t = sqrt(ab_t) s_t x0 + sqrt(1 - ab_t) eps``; ``s_t`` ramps linearly from
``scale_a`` to ``scale_b`` over the first ``mid_step`` timesteps and stays at ``scale_b`` after
(:func:`make_x0_scale`). At each t this is the ordinary process of the scaled data ``y_t = s_t x0``: the model's
eps, v and x0 predictions are those of ``y_t`` (an x0-prediction predicts ``s_t x0``), the conversions below are
unchanged, and :meth:`NoiseSchedule.q_sample` and :meth:`NoiseSchedule.velocity` apply ``s_t`` themselves.
Only a sampler, which moves between two levels with two scales, divides by ``s_t`` and multiplies by the next
level's scale (samplers.py). Without it (``x0_scale is None``, the default) nothing here changes.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch

Prediction = Literal["eps", "v", "x0"]
PREDICTIONS = ("eps", "v", "x0")
SCHEDULES = ("linear", "scaled_linear", "cosine")
TimestepLike = Union[int, torch.Tensor]


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so its last value is 0 and its first is unchanged."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def make_betas(
    schedule: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> torch.Tensor:
    """The beta sequence of a named schedule, a float64 tensor of shape ``(num_timesteps,)``.

    - ``linear``: ``linspace(beta_start, beta_end)`` (DDPM, diffusers ``"linear"``). IDDPM also
      multiplies both ends by ``1000 / num_timesteps``. That makes no difference at 1000 steps,
      and it is not done here.
    - ``scaled_linear``: ``linspace(sqrt(beta_start), sqrt(beta_end)) ** 2`` (Stable Diffusion).
    - ``cosine``: IDDPM's ``alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2`` with s = 0.008,
      and betas clipped at 0.999 (diffusers ``"squaredcos_cap_v2"``). It ignores ``beta_start``
      and ``beta_end``.
    - ``zero_terminal_snr``: rescale so that ``alphas_cumprod[-1] == 0`` (Lin et al. 2023,
      diffusers ``rescale_betas_zero_snr``).
    """
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    if zero_terminal_snr:
        betas = _zero_terminal_snr(betas)
    return betas


def make_x0_scale(num_timesteps: int, scale_a: float = 1.0, scale_b: float = 0.7, mid_step: int = 400) -> torch.Tensor:
    """VideoCrafter's ``scale_arr`` (lvdm/models/ddpm3d.py, ``LatentDiffusion.__init__``), float64, ``(num_timesteps,)``:
    ``linspace(scale_a, scale_b, mid_step)`` (so ``scale_b`` is reached at t = mid_step - 1), then ``scale_b``.

    The official code builds ``mid_step + num_timesteps`` values (or ``num_timesteps`` with ``fix_scale_bug``) and
    only ever reads the first ``num_timesteps``: both variants give these values. It stores them in float32; here
    they stay float64 like every schedule quantity.
    """
    if not 0 <= mid_step <= num_timesteps:
        raise ValueError(f"mid_step must be in [0, {num_timesteps}] (the timesteps of the ramp); got {mid_step}")
    if not (scale_a > 0 and scale_b > 0):
        raise ValueError(f"scale_a and scale_b must be positive; got {scale_a}, {scale_b}")
    ramp = np.linspace(scale_a, scale_b, mid_step)
    rest = np.full(num_timesteps - mid_step, scale_b)
    return torch.from_numpy(np.concatenate((ramp, rest))).to(torch.float64)


def broadcast_timesteps(v: TimestepLike, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-example or per-frame values so that they broadcast against ``x``.

    ``v`` has the shape of a timestep tensor:
    - ``()`` or a Python number: one value for every example;
    - ``(B,)``: ``(B, 1, 1, 1, 1)`` for a 5-D ``x`` of shape (B, C, T, H, W), or ``(B, 1, 1, 1)`` for a 4-D ``x``;
    - ``(B, T)``: one value per frame, ``(B, 1, T, 1, 1)``; it needs a 5-D ``x``.
    """
    if not torch.is_tensor(v):
        v = torch.tensor(v)
    if v.dim() == 0:
        return v.reshape([1] * x.dim())
    if v.shape[0] != x.shape[0]:
        raise ValueError(f"timesteps of shape {tuple(v.shape)} do not match a batch of {x.shape[0]} (x {tuple(x.shape)})")
    if v.dim() == 1:
        return v.reshape(-1, *([1] * (x.dim() - 1)))  # (B,) -> (B, 1, ..., 1)
    if v.dim() == 2:
        if x.dim() != 5 or v.shape[1] != x.shape[2]:
            raise ValueError(f"per-frame timesteps {tuple(v.shape)} need x of shape (B, C, T, H, W) with "
                             f"T = {v.shape[1]}; got x {tuple(x.shape)}")
        return v[:, None, :, None, None]  # (B, T) -> (B, 1, T, 1, 1)
    raise ValueError(f"timesteps must have shape (), (B,) or (B, T); got {tuple(v.shape)}")


def prediction_coefficients(alpha_cumprod: torch.Tensor, src: str, dst: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``(a, b)`` with ``dst = a * x_t + b * src`` at the given alpha_cumprod, in its dtype.

    With ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps`` and ``v = sqrt(ab) eps - sqrt(1 - ab) x0``,
    each kind is linear in ``(x_t, src)``. We first write x0 and eps in terms of ``(x_t, src)``,
    then build dst from them.
    """
    for kind in (src, dst):
        if kind not in PREDICTIONS:
            raise ValueError(f"unknown prediction kind {kind!r}; choose one of {list(PREDICTIONS)}")
    sa, s1 = alpha_cumprod.sqrt(), (1.0 - alpha_cumprod).sqrt()
    zero, one = torch.zeros_like(sa), torch.ones_like(sa)
    if src == "x0":
        x0, eps = (zero, one), (1.0 / s1, -sa / s1)
    elif src == "eps":
        x0, eps = (1.0 / sa, -s1 / sa), (zero, one)  # undefined where alpha_cumprod == 0
    else:  # v
        x0, eps = (sa, -s1), (s1, sa)
    if dst == "x0":
        return x0
    if dst == "eps":
        return eps
    return sa * eps[0] - s1 * x0[0], sa * eps[1] - s1 * x0[1]  # v = sqrt(ab) eps - sqrt(1 - ab) x0


def convert_prediction(pred: torch.Tensor, src: str, dst: str, x_t: torch.Tensor,
                       alpha_cumprod: Union[float, torch.Tensor]) -> torch.Tensor:
    """Convert ``pred`` of kind ``src`` into kind ``dst`` (``"eps" | "v" | "x0"``), given x_t.

    ``alpha_cumprod`` is a number or a tensor that broadcasts against ``x_t``. Prefer float64:
    the coefficients are formed in its dtype and cast to x_t's dtype only at the end.
    """
    if src == dst:
        return pred
    ab = torch.as_tensor(alpha_cumprod, dtype=torch.float64)
    a, b = prediction_coefficients(ab, src, dst)
    a, b = (c.to(dtype=x_t.dtype).to(x_t.device) for c in (a, b))
    return a * x_t + b * pred


class NoiseSchedule:
    """A discrete variance-preserving schedule: ``q(x_t | x0) = N(sqrt(ab_t) x0, (1 - ab_t) I)``.

    ``timestep_map[i]`` is the original timestep that index ``i`` stands for. It is the identity,
    except in a schedule made by :meth:`respaced`, whose indices are what the sampler walks and
    whose ``timestep_map`` gives what the model is called with.

    ``x0_scale``: VideoCrafter's ``scale_arr`` (module docstring, :func:`make_x0_scale`), one positive value per
    timestep, or None (the ordinary process).
    """

    def __init__(self, betas: torch.Tensor, timestep_map: Optional[torch.Tensor] = None,
                 x0_scale: Optional[torch.Tensor] = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D sequence of values in (0, 1]")
        self._setup(betas, torch.cumprod(1.0 - betas, dim=0), timestep_map, x0_scale)

    @classmethod
    def from_name(cls, schedule: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        return cls(make_betas(schedule, num_timesteps, beta_start, beta_end, zero_terminal_snr))

    def _setup(self, betas: torch.Tensor, alphas_cumprod: torch.Tensor, timestep_map: Optional[torch.Tensor],
               x0_scale: Optional[torch.Tensor] = None) -> None:
        n = betas.shape[0]
        self.num_timesteps = n
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, posterior_variance)   (DDPM eq. 6-7)
        ab_prev = self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - ab_prev) / (1.0 - alphas_cumprod)
        # The posterior variance is 0 at t = 0; as IDDPM, its log there takes the t = 1 value
        # (it is only used as an endpoint of the learned range and never scales noise at t = 0).
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]) if n > 1 else betas)
        self.posterior_mean_coef1 = betas * ab_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * self.alphas.sqrt() / (1.0 - alphas_cumprod)
        if timestep_map is None:
            timestep_map = torch.arange(n, dtype=torch.long)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.long).cpu()
        if self.timestep_map.shape != (n,):
            raise ValueError(f"timestep_map must have shape ({n},); got {tuple(self.timestep_map.shape)}")
        self.is_respaced = not torch.equal(self.timestep_map, torch.arange(n))
        if x0_scale is not None:
            x0_scale = torch.as_tensor(x0_scale, dtype=torch.float64).detach().cpu()
            if x0_scale.shape != (n,) or not bool((x0_scale > 0).all()):
                raise ValueError(f"x0_scale must hold {n} positive values (one per timestep); got shape "
                                 f"{tuple(x0_scale.shape)}")
        self.x0_scale: Optional[torch.Tensor] = x0_scale  # VideoCrafter's scale_arr, or None

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        scale = "" if self.x0_scale is None else f", x0_scale=[{self.x0_scale[0]:.3g}..{self.x0_scale[-1]:.3g}]"
        return (f"NoiseSchedule(num_timesteps={self.num_timesteps}, beta=[{self.betas[0]:.3g}..{self.betas[-1]:.3g}], "
                f"alpha_cumprod[-1]={self.alphas_cumprod[-1]:.3g}, respaced={self.is_respaced}{scale})")

    # -- gathering ---------------------------------------------------------------------------
    def _gather(self, arr: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """``arr[t]`` in float64 on the CPU, with t's shape."""
        idx = torch.as_tensor(t).detach().to("cpu", torch.long)
        if bool(((idx < 0) | (idx >= self.num_timesteps)).any()):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps}); got min {int(idx.min())}, max {int(idx.max())}")
        return arr[idx]

    def gather(self, arr: torch.Tensor, t: TimestepLike, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``arr[t]`` reshaped to broadcast against ``x``, cast to ``dtype`` (default x's) and moved to x's device."""
        v = broadcast_timesteps(self._gather(arr, t), x)
        return v.to(dtype=dtype or x.dtype).to(x.device)

    def model_timesteps(self, t: TimestepLike) -> torch.Tensor:
        """The original timesteps that indices ``t`` stand for (what the denoiser is called with)."""
        t = torch.as_tensor(t)
        if not self.is_respaced:
            return t
        return self.timestep_map.to(t.device)[t.long()]

    def snr(self, t: TimestepLike) -> torch.Tensor:
        """Signal-to-noise ratio ``ab / (1 - ab)`` at t, float64, t's shape."""
        ab = self._gather(self.alphas_cumprod, t)
        return ab / (1.0 - ab)

    # -- forward process ---------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: TimestepLike, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x0)``; with ``t`` of shape (B, T), each frame gets its own noise level.

        With ``x0_scale``: ``sqrt(ab_t) s_t x0 + sqrt(1 - ab_t) noise`` (VideoCrafter's q_sample), the factor
        ``sqrt(ab_t) s_t`` formed in float64."""
        if noise is None:
            noise = randn_like(x0, generator)
        if self.x0_scale is not None:
            signal = self.gather(self.sqrt_alphas_cumprod * self.x0_scale, t, x0)
            return signal * x0 + self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        return self.gather(self.sqrt_alphas_cumprod, t, x0) * x0 + self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def augment(self, z: torch.Tensor, level: TimestepLike, noise: torch.Tensor) -> torch.Tensor:
        """Noise-conditioning augmentation of a condition (an upsampler's low-resolution latent, Imagen / Video LDM):
        ``sqrt(ab_s) z + sqrt(1 - ab_s) noise`` at level ``s`` (B,), a timestep of this schedule; level 0 is ``z``
        exactly (no augmentation: ``ab_0 = 1 - beta_0`` would still add a trace of noise).

        Unlike :meth:`q_sample` it never applies ``x0_scale``: that scales the data the denoiser recovers, not a
        condition it is given."""
        level = torch.as_tensor(level).detach().cpu().long()
        noised = (self.gather(self.sqrt_alphas_cumprod, level, z) * z
                  + self.gather(self.sqrt_one_minus_alphas_cumprod, level, z) * noise)
        return torch.where(broadcast_timesteps(level == 0, z).to(z.device), z, noised)

    def scale_x0(self, x0: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """``s_t x0``: the data as the process at t sees it (what an x0-prediction predicts); x0 without x0_scale."""
        return x0 if self.x0_scale is None else self.gather(self.x0_scale, t, x0) * x0

    def unscale_x0(self, y: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """The inverse of :meth:`scale_x0`: x0 from the scaled data ``s_t x0`` (a model's x0 estimate)."""
        return y if self.x0_scale is None else y / self.gather(self.x0_scale, t, y)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """The v-prediction target ``sqrt(ab) eps - sqrt(1 - ab) x0`` (finite at zero terminal SNR); with
        ``x0_scale``, that of the scaled data, ``sqrt(ab) eps - sqrt(1 - ab) s_t x0``."""
        if self.x0_scale is not None:
            data = self.gather(self.sqrt_one_minus_alphas_cumprod * self.x0_scale, t, x0)
            return self.gather(self.sqrt_alphas_cumprod, t, x0) * noise - data * x0
        return self.gather(self.sqrt_alphas_cumprod, t, x0) * noise - self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    # -- conversions -------------------------------------------------------------------------
    def convert(self, pred: torch.Tensor, src_kind: str, dst_kind: str, x_t: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """Convert a prediction between ``"eps"``, ``"v"`` and ``"x0"`` (see the module note on zero terminal SNR)."""
        if src_kind == dst_kind:
            return pred
        ab = broadcast_timesteps(self._gather(self.alphas_cumprod, t), x_t)
        return convert_prediction(pred, src_kind, dst_kind, x_t, ab)

    def to_x0(self, pred: torch.Tensor, kind: str, x_t: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        return self.convert(pred, kind, "x0", x_t, t)

    def to_eps(self, pred: torch.Tensor, kind: str, x_t: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        return self.convert(pred, kind, "eps", x_t, t)

    def to_v(self, pred: torch.Tensor, kind: str, x_t: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        return self.convert(pred, kind, "v", x_t, t)

    # -- posterior ---------------------------------------------------------------------------
    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: TimestepLike
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of ``q(x_{t-1} | x_t, x0)``.

        The variance terms broadcast against x_t, e.g. (B, 1, 1, 1, 1), or (B, 1, T, 1, 1) for per-frame t.
        """
        mean = self.gather(self.posterior_mean_coef1, t, x_t) * x0 + self.gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self.gather(self.posterior_variance, t, x_t), self.gather(self.posterior_log_variance_clipped, t, x_t)

    def learned_range_log_variance(self, frac_values: torch.Tensor, t: TimestepLike) -> torch.Tensor:
        """IDDPM learned range: ``frac * log(beta_t) + (1 - frac) * log(posterior variance)``, frac = (v + 1) / 2."""
        frac = (frac_values + 1) / 2
        max_log = self.gather(torch.log(self.betas), t, frac_values)
        min_log = self.gather(self.posterior_log_variance_clipped, t, frac_values)
        return frac * max_log + (1 - frac) * min_log

    # -- respacing ---------------------------------------------------------------------------
    def respaced(self, timesteps: Sequence[int]) -> "NoiseSchedule":
        """IDDPM timestep respacing: a schedule over the kept timesteps only (any order; duplicates are dropped).

        The new schedule's alphas_cumprod are the old ones at the kept timesteps, and its betas are
        ``1 - ab[k_i] / ab[k_{i-1}]``. Index i of the new schedule calls the model with
        ``timestep_map[i]``, an original timestep. Respacing a respaced schedule composes the maps.
        """
        keep = sorted({int(k) for k in timesteps})
        if not keep:
            raise ValueError("respaced() needs at least one timestep")
        if keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must lie in [0, {self.num_timesteps}); got {keep[0]}..{keep[-1]}")
        idx = torch.tensor(keep, dtype=torch.long)
        ab = self.alphas_cumprod[idx]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        new = NoiseSchedule.__new__(NoiseSchedule)
        new._setup(1.0 - ab / ab_prev, ab, self.timestep_map[idx], None if self.x0_scale is None else self.x0_scale[idx])
        return new


def spaced_timesteps(steps: int, num_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """``steps`` timesteps in decreasing order, following diffusers' ``timestep_spacing`` definitions.

    - ``leading``: ``arange(steps) * (num_timesteps // steps) + steps_offset`` (DDIM; IDDPM's ``"ddimN"``).
    - ``trailing``: ``round(arange(num_timesteps, 0, -num_timesteps / steps)) - 1``. It starts at the
      last timestep, which zero-terminal-SNR sampling needs (Lin et al. 2023, Table 2). For some
      step counts (e.g. 61 of 1000), float error in diffusers' arange adds a timestep -1,
      which indexes the *last* alpha there. We drop it.
    - ``linspace``: ``round(linspace(0, num_timesteps - 1, steps))``. This is IDDPM's plain ``"N"``
      respacing (DiT and Latte's ``num_sampling_steps: 250``), up to float ties in the rounding.

    ``steps_offset`` applies to ``leading`` only, as in diffusers.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}]; got {steps}")
    if spacing == "leading":
        ratio = num_timesteps // steps
        ts = [i * ratio + steps_offset for i in range(steps)]
    elif spacing == "trailing":
        # numpy, not torch: its arange / linspace round differently in the last bit, which flips ties.
        ts = (np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1).tolist()[::-1]
        ts = [k for k in ts if k >= 0]  # float error can add a step at -1 (e.g. 61 of 1000; diffusers keeps it)
    elif spacing == "linspace":
        ts = np.linspace(0, num_timesteps - 1, steps).round().astype(np.int64).tolist()
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of ['leading', 'trailing', 'linspace']")
    if ts[-1] >= num_timesteps:
        raise ValueError(f"steps_offset={steps_offset} pushes timestep {ts[-1]} past {num_timesteps - 1}")
    if len(ts) != steps or len(set(ts)) != steps:
        raise ValueError(f"{spacing!r} spacing does not give {steps} distinct timesteps of {num_timesteps}: {ts}")
    return ts[::-1]


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn as diffusers' ``randn_tensor`` draws it (see :func:`randn`)."""
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def randn(shape, generator=None, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``torch.randn`` on the generator's device, then moved to ``device`` (default: the generator's device).

    A list of generators draws one example from each, as diffusers' ``randn_tensor`` does.
    The same seed therefore gives the same noise here and in a diffusers pipeline.
    """
    shape = tuple(shape)
    if device is None:  # default: where the (first) generator lives, else the CPU
        first = generator[0] if isinstance(generator, (list, tuple)) else generator
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([randn((1, *shape[1:]), g, dtype, device) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


def build_schedule(cfg) -> NoiseSchedule:
    """The training schedule a ``diffusion:`` section (DiffusionConfig) describes, with its ``x0_scale`` if set."""
    scale = getattr(cfg, "x0_scale", None)
    x0_scale = None if scale is None else make_x0_scale(cfg.num_timesteps, scale.scale_a, scale.scale_b, scale.mid_step)
    return NoiseSchedule(make_betas(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end,
                                    zero_terminal_snr=cfg.zero_terminal_snr), x0_scale=x0_scale)
