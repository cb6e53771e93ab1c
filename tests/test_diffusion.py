"""Tests for moviola.diffusion: schedules, conversions, losses, samplers (vs diffusers), guidance.

Sampler parity: diffusers keeps its schedule in float32, and a float32 cumulative product drifts
by ~1e-6 relative over 1000 steps. Through 1/sqrt(alpha_cumprod) that becomes ~1e-3 in x. So the
reference schedulers get float64 tensors, computed here from the same betas with
``torch.cumprod`` (``_float64``), and run on float64 samples. What is compared is diffusers'
stepping algorithm, its timestep spacing and its noise draws, to 1e-5.
"""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from scipy.stats import norm as scipy_norm

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr  # noqa: E402

from moviola.conditioning import Conditioning  # noqa: E402
from moviola.diffusion import (NoiseSchedule, broadcast_timesteps, classifier_free_guidance, ddim_step,  # noqa: E402
                               discretized_gaussian_log_likelihood, guided_model_fn, make_betas, normal_kl,
                               sample, spaced_timesteps, training_losses)

F64 = torch.float64
SHAPE = (2, 3, 4, 5, 5)  # (B, C, T, H, W)


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                                  ("cosine", "squaredcos_cap_v2")])
def test_make_betas_match_diffusers(name, diffusers_name):
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    ours = make_betas(name, 1000, **kw)
    ref = DDPMScheduler(beta_schedule=diffusers_name, **kw).betas  # float32
    assert ours.dtype == F64 and ours.shape == (1000,)
    torch.testing.assert_close(ours, ref.to(F64), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_matches_diffusers(name):
    base = make_betas(name)
    ours = make_betas(name, zero_terminal_snr=True)
    torch.testing.assert_close(ours, rescale_zero_terminal_snr(base.clone()), rtol=0, atol=1e-12)
    ab, ab_base = torch.cumprod(1 - ours, 0), torch.cumprod(1 - base, 0)
    assert ab[-1] == 0 and abs(ab[0] - ab_base[0]) < 1e-15


def test_unknown_schedule_lists_options():
    with pytest.raises(ValueError, match="linear.*scaled_linear.*cosine"):
        make_betas("quadratic")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 25, 50, 250, 333, 1000])
def test_spaced_timesteps_match_diffusers(spacing, steps):
    for cls in (DDIMScheduler, DDPMScheduler):
        s = cls(timestep_spacing=spacing)
        s.set_timesteps(steps)
        assert spaced_timesteps(steps, 1000, spacing) == s.timesteps.tolist()
    s = DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(50)
    assert spaced_timesteps(50, 1000, "leading", steps_offset=1) == s.timesteps.tolist()


def test_trailing_drops_diffusers_minus_one():
    s = DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(61)
    ref = s.timesteps.tolist()
    assert ref[-1] == -1 and len(ref) == 62  # float error in diffusers' arange
    assert spaced_timesteps(61, 1000, "trailing") == ref[:-1]


@pytest.mark.parametrize("steps", [25, 50, 100, 250])
def test_linspace_is_iddpm_respacing(steps):
    # IDDPM's space_timesteps(1000, [steps]): a running sum of a fractional stride, rounded.
    stride, cur, want = 999 / (steps - 1), 0.0, []
    for _ in range(steps):
        want.append(round(cur))
        cur += stride
    assert sorted(spaced_timesteps(steps, 1000, "linspace")) == want


def test_respaced_schedule():
    sched = NoiseSchedule(make_betas("cosine"))
    keep = spaced_timesteps(50, 1000, "leading")
    sub = sched.respaced(keep)
    ref_ab = torch.cumprod(1 - make_betas("cosine"), 0)[sorted(keep)]
    torch.testing.assert_close(sub.alphas_cumprod, ref_ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.cumprod(1 - sub.betas, 0), ref_ab, rtol=1e-12, atol=0)
    assert sub.timestep_map.tolist() == sorted(keep) and sub.is_respaced and not sched.is_respaced
    assert sub.model_timesteps(torch.tensor([0, 49])).tolist() == [0, 980]
    # respacing composes with the original map
    assert sub.respaced([0, 10, 49]).timestep_map.tolist() == [0, 200, 980]
    full = sched.respaced(range(1000))
    torch.testing.assert_close(full.betas, sched.betas, rtol=1e-12, atol=0)


def test_broadcast_timesteps_shapes():
    x5, x4 = torch.zeros(SHAPE), torch.zeros(2, 3, 5, 5)
    assert broadcast_timesteps(torch.tensor([1, 2]), x5).shape == (2, 1, 1, 1, 1)
    assert broadcast_timesteps(torch.tensor([1, 2]), x4).shape == (2, 1, 1, 1)
    t = torch.arange(8).view(2, 4)
    bt = broadcast_timesteps(t, x5)
    assert bt.shape == (2, 1, 4, 1, 1) and bt[1, 0, 2, 0, 0] == 6
    with pytest.raises(ValueError):
        broadcast_timesteps(t, x4)
    with pytest.raises(ValueError):
        broadcast_timesteps(torch.zeros(2, 3, dtype=torch.long), x5)  # T mismatch
    with pytest.raises(ValueError):
        broadcast_timesteps(torch.tensor([1, 2, 3]), x5)  # B mismatch


def test_q_sample_per_frame_uses_each_frames_level():
    sched = NoiseSchedule(make_betas("linear"))
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    x0, noise = torch.randn(SHAPE, dtype=F64), torch.randn(SHAPE, dtype=F64)
    t = torch.tensor([[0, 250, 500, 999], [10, 10, 900, 3]])
    x_t = sched.q_sample(x0, t, noise)
    for b in range(2):
        for f in range(4):
            a = ab[t[b, f]]
            want = a.sqrt() * x0[b, :, f] + (1 - a).sqrt() * noise[b, :, f]
            torch.testing.assert_close(x_t[b, :, f], want, rtol=0, atol=1e-12)
    # a per-frame t that is constant over frames is the per-example t
    t1 = torch.tensor([7, 600])
    torch.testing.assert_close(sched.q_sample(x0, t1[:, None].expand(2, 4), noise), sched.q_sample(x0, t1, noise))


# ----------------------------------------------------------------------------------------------
# eps / v / x0 conversions
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_conversions_round_trip(per_frame, zero_snr):
    sched = NoiseSchedule.from_name("cosine", zero_terminal_snr=zero_snr)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g, dtype=F64), torch.randn(SHAPE, generator=g, dtype=F64)
    top = 998 if zero_snr else 1000  # eps <-> x0 is undefined at the zero-SNR step
    t = torch.randint(0, top, (2, 4) if per_frame else (2,), generator=g)
    x_t = sched.q_sample(x0, t, noise)
    ab = broadcast_timesteps(torch.cumprod(1 - sched.betas, 0)[t], x0)
    truth = {"x0": x0, "eps": noise, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}
    torch.testing.assert_close(sched.velocity(x0, noise, t), truth["v"], rtol=0, atol=1e-10)
    for src in truth:
        for dst in truth:
            got = sched.convert(truth[src], src, dst, x_t, t)
            torch.testing.assert_close(got, truth[dst], rtol=0, atol=1e-8, msg=f"{src} -> {dst}")
    torch.testing.assert_close(sched.to_x0(truth["v"], "v", x_t, t), x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(sched.to_eps(x0, "x0", x_t, t), noise, rtol=0, atol=1e-8)
    torch.testing.assert_close(sched.to_v(noise, "eps", x_t, t), truth["v"], rtol=0, atol=1e-8)


def test_conversions_4d_and_float32():
    sched = NoiseSchedule.from_name("linear")
    x0, noise = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    t = torch.tensor([3, 700])
    x_t = sched.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32
    out = sched.to_x0(noise, "eps", x_t, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_zero_terminal_snr_conversions():
    sched = NoiseSchedule.from_name("linear", zero_terminal_snr=True)
    x_t, v = torch.randn(SHAPE, dtype=F64), torch.randn(SHAPE, dtype=F64)
    t = torch.full((2,), 999)
    assert torch.equal(sched.to_x0(v, "v", x_t, t), -v)  # finite: x0 = -v where alpha_cumprod == 0
    assert torch.equal(sched.to_eps(v, "v", x_t, t), x_t)
    assert not torch.isfinite(sched.to_x0(v, "eps", x_t, t)).all()  # documented: eps carries no x0 there


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)


def test_discretized_log_likelihood():
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in [(0.1, -3.0), (-0.95, -4.0), (0.7, 0.0), (5.0, -1.0)]:
        m, ls = torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        ll = discretized_gaussian_log_likelihood(levels, m, ls)
        assert abs(ll.exp().sum().item() - 1) < 1e-9  # the 256 bins cover the real line
        n = Normal(torch.tensor(mean, dtype=F64), torch.tensor(math.exp(log_scale), dtype=F64))
        inner = levels[1:-1]
        # reflect bins above the mean into the lower tail, where the CDF keeps its precision
        lo, hi = inner - 1 / 255, inner + 1 / 255
        up = inner > mean
        lo, hi = torch.where(up, 2 * mean - hi, lo), torch.where(up, 2 * mean - lo, hi)
        want = torch.log((n.cdf(hi) - n.cdf(lo)).clamp(min=1e-12))
        torch.testing.assert_close(ll[1:-1], want, rtol=1e-6, atol=1e-9)
        scale = math.exp(log_scale)  # the end bins reach to -inf / +inf
        assert ll[0].item() == pytest.approx(scipy_norm.logcdf(-1 + 1 / 255, loc=mean, scale=scale), rel=1e-9)
        assert ll[-1].item() == pytest.approx(scipy_norm.logsf(1 - 1 / 255, loc=mean, scale=scale), rel=1e-9)


class FrameWiseModel(torch.nn.Module):
    """An elementwise denoiser (so each frame only sees its own t); 2C channels when learned_sigma."""

    def __init__(self, channels: int, learned_sigma: bool):
        super().__init__()
        self.learned_sigma = learned_sigma
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, channels, dtype=F64).view(1, -1, 1, 1, 1))
        self.u = torch.nn.Parameter(torch.linspace(-1.0, 1.0, channels, dtype=F64).view(1, -1, 1, 1, 1))

    def forward(self, x, t, cond=None):
        tt = broadcast_timesteps(t, x).to(x.dtype) / 1000
        mean = torch.sin(self.w * x + tt)
        if not self.learned_sigma:
            return mean
        return torch.cat([mean, torch.tanh(self.u * x - tt)], dim=1)


def _posterior(betas, t, x0, x_t):
    """Direct DDPM posterior q(x_{t-1} | x_t, x0) for a scalar t >= 1 (eq. 6-7 of Ho et al.)."""
    ab = torch.cumprod(1 - betas, 0)
    a_t, ab_t, ab_p = 1 - betas[t], ab[t], ab[t - 1]
    mean = ab_p.sqrt() * betas[t] / (1 - ab_t) * x0 + a_t.sqrt() * (1 - ab_p) / (1 - ab_t) * x_t
    return mean, betas[t] * (1 - ab_p) / (1 - ab_t)


def test_hybrid_loss_kl_matches_direct_gaussian_kl():
    betas = make_betas("linear")
    sched = NoiseSchedule(betas)
    model = FrameWiseModel(3, learned_sigma=True)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(SHAPE, generator=g, dtype=F64) * 1.8 - 0.9, torch.randn(SHAPE, generator=g, dtype=F64)
    t = torch.tensor([1, 437])
    out = training_losses(model, sched, x0, t, None, learned_sigma=True, noise=noise)
    ab = torch.cumprod(1 - betas, 0)
    for b in range(2):
        tb = int(t[b])
        x_t = ab[tb].sqrt() * x0[b] + (1 - ab[tb]).sqrt() * noise[b]
        pred = model(x_t[None], t[b:b + 1])[0]
        eps, v = pred[:3], pred[3:]
        x0_hat = (x_t - (1 - ab[tb]).sqrt() * eps) / ab[tb].sqrt()
        true_mean, true_var = _posterior(betas, tb, x0[b], x_t)
        model_mean, _ = _posterior(betas, tb, x0_hat, x_t)
        frac = (v + 1) / 2
        model_var = torch.exp(frac * betas[tb].log() + (1 - frac) * true_var.log())
        kl = kl_divergence(Normal(true_mean, true_var.sqrt()), Normal(model_mean, model_var.sqrt()))
        torch.testing.assert_close(out["vb"][b], kl.mean() / math.log(2), rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(out["mse"][b], ((eps - noise[b]) ** 2).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])


def test_hybrid_loss_decoder_nll_at_t0():
    betas = make_betas("linear")
    sched = NoiseSchedule(betas)
    model = FrameWiseModel(3, learned_sigma=True)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(SHAPE, generator=g, dtype=F64) * 1.8 - 0.9, torch.randn(SHAPE, generator=g, dtype=F64)
    t = torch.zeros(2, dtype=torch.long)
    out = training_losses(model, sched, x0, t, None, learned_sigma=True, noise=noise)
    ab = torch.cumprod(1 - betas, 0)
    x_t = ab[0].sqrt() * x0 + (1 - ab[0]).sqrt() * noise
    pred = model(x_t, t)
    x0_hat = (x_t - (1 - ab[0]).sqrt() * pred[:, :3]) / ab[0].sqrt()  # posterior mean at t=0 is x0_hat
    _, var1 = _posterior(betas, 1, x0, x_t)  # the clipped log variance at t = 0 is the t = 1 one
    frac = (pred[:, 3:] + 1) / 2
    std = torch.exp(0.5 * (frac * betas[0].log() + (1 - frac) * var1.log()))
    n = Normal(x0_hat, std)
    nll = -torch.log(n.cdf(x0 + 1 / 255) - n.cdf(x0 - 1 / 255))  # x0 is inside (-1, 1): no edge bins
    torch.testing.assert_close(out["vb"], nll.mean(dim=(1, 2, 3, 4)) / math.log(2), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vb_trains_only_the_variance(prediction):
    sched = NoiseSchedule.from_name("cosine")
    B, C = 2, 3
    mean_out = torch.randn(B, C, 4, 5, 5, dtype=F64, requires_grad=True)
    var_out = torch.empty(B, C, 4, 5, 5, dtype=F64).uniform_(-1, 1).requires_grad_(True)
    model = lambda x, t, cond: torch.cat([mean_out, var_out], dim=1)  # noqa: E731
    out = training_losses(model, sched, torch.randn(SHAPE, dtype=F64), torch.tensor([0, 300]), None,
                          prediction=prediction, learned_sigma=True)
    g_mean, g_var = torch.autograd.grad(out["vb"].sum(), [mean_out, var_out], allow_unused=True)
    assert g_mean is None or torch.count_nonzero(g_mean) == 0
    assert torch.count_nonzero(g_var) > 0
    (g_mse,) = torch.autograd.grad(out["mse"].sum(), [mean_out])
    assert torch.count_nonzero(g_mse) > 0


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_per_frame_t_equal_to_broadcast_t(prediction, learned_sigma, weighting):
    sched = NoiseSchedule.from_name("linear")
    model = FrameWiseModel(3, learned_sigma)
    x0, noise = torch.rand(SHAPE, dtype=F64) * 2 - 1, torch.randn(SHAPE, dtype=F64)
    t = torch.tensor([0, 512])
    kw = dict(prediction=prediction, learned_sigma=learned_sigma, noise=noise, loss_weighting=weighting)
    a = training_losses(model, sched, x0, t, None, **kw)
    b = training_losses(model, sched, x0, t[:, None].expand(2, 4), None, **kw)
    for k in ["loss", "mse"] + (["vb"] if learned_sigma else []):
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)


def test_per_frame_vb_selects_t0_per_frame():
    """With t = (0, 5, 0, 700) over the frames, vb is the mean of the four single-frame losses."""
    sched = NoiseSchedule.from_name("linear")
    model = FrameWiseModel(3, learned_sigma=True)
    x0, noise = torch.rand(SHAPE, dtype=F64) * 1.8 - 0.9, torch.randn(SHAPE, dtype=F64)
    t = torch.tensor([[0, 5, 0, 700], [3, 0, 999, 0]])
    whole = training_losses(model, sched, x0, t, None, learned_sigma=True, noise=noise)
    parts = [training_losses(model, sched, x0[:, :, f:f + 1], t[:, f], None, learned_sigma=True,
                             noise=noise[:, :, f:f + 1]) for f in range(4)]
    for k in ("vb", "mse", "loss"):
        torch.testing.assert_close(whole[k], torch.stack([p[k] for p in parts]).mean(0), rtol=1e-10, atol=1e-12)


def test_min_snr_weighting():
    sched = NoiseSchedule.from_name("linear", zero_terminal_snr=True)
    model = FrameWiseModel(3, learned_sigma=False)
    x0, noise = torch.randn(SHAPE, dtype=F64), torch.randn(SHAPE, dtype=F64)
    t = torch.tensor([[1, 100, 500, 999], [999, 0, 20, 300]])
    ab = torch.cumprod(1 - sched.betas, 0)
    snr = broadcast_timesteps(ab[t] / (1 - ab[t]), x0)
    for prediction, weight in [("eps", torch.where(snr > 0, snr.clamp(max=5.0) / snr, torch.ones_like(snr))),
                               ("v", snr.clamp(max=5.0) / (snr + 1)), ("x0", snr.clamp(max=5.0))]:
        out = training_losses(model, sched, x0, t, None, prediction=prediction, noise=noise,
                              loss_weighting="min_snr", min_snr_gamma=5.0)
        want = (weight * (out["target"] - out["pred"]) ** 2).mean(dim=(1, 2, 3, 4))
        assert torch.isfinite(out["loss"]).all()
        torch.testing.assert_close(out["loss"], want, rtol=1e-12, atol=1e-12)


def test_low_precision_losses_are_float32():
    sched = NoiseSchedule.from_name("linear")
    model = lambda x, t, cond: torch.cat([0.5 * x, torch.tanh(x)], 1)  # noqa: E731
    x0 = torch.randn(SHAPE).to(torch.bfloat16)
    out = training_losses(model, sched, x0, torch.tensor([[0, 1, 500, 999], [3, 0, 2, 1]]), None,
                          prediction="v", learned_sigma=True, loss_weighting="min_snr")
    assert all(out[k].dtype == torch.float32 and torch.isfinite(out[k]).all() for k in ("loss", "mse", "vb"))


def test_loss_checks_channels():
    sched = NoiseSchedule.from_name("linear")
    with pytest.raises(ValueError, match="channels"):
        training_losses(FrameWiseModel(3, False), sched, torch.randn(SHAPE, dtype=F64), torch.tensor([1, 2]),
                        None, learned_sigma=True)


# ----------------------------------------------------------------------------------------------
# samplers vs diffusers
# ----------------------------------------------------------------------------------------------
def eps_fn(x, t):
    """A deterministic stand-in for a denoiser: smooth, bounded and depending on t."""
    return torch.sin(3 * x + t.to(x.dtype).view(-1, 1, 1, 1, 1) / 300.0)


def eps_var_fn(x, t):
    """2C channels: a mean prediction and a learned-range value in [-1, 1]."""
    return torch.cat([eps_fn(x, t), torch.tanh(2 * x - t.to(x.dtype).view(-1, 1, 1, 1, 1) / 500.0)], dim=1)


def _float64(sched, betas, final_alpha="one"):
    """Give a diffusers scheduler float64 schedule tensors computed from ``betas`` (see module docstring)."""
    sched.betas = betas.to(F64).clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=F64)  # DDPM
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64) if final_alpha == "one" else sched.alphas_cumprod[0]
    return sched


def _diffusers_run(sched, model_fn, steps, seed, x_T=None, start=0, **step_kw):
    """The usual diffusers loop: x_T drawn first from the generator, then scheduler.step(generator=g)."""
    g = torch.Generator().manual_seed(seed)
    sched.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=g, dtype=F64) if x_T is None else x_T
    traj = []
    for t in sched.timesteps[start:]:
        out = model_fn(x, torch.full((SHAPE[0],), int(t)))
        x = sched.step(out, int(t), x, generator=g, **step_kw).prev_sample
        traj.append(x)
    return traj


def _ours(schedule, model_fn, seed, **kw):
    traj = []
    x = sample(model_fn, schedule, SHAPE, generator=torch.Generator().manual_seed(seed), dtype=F64,
               callback=lambda i, t, x, x0: traj.append(x), **kw)
    assert torch.equal(x, traj[-1])
    return traj


def _assert_same_trajectory(ours, ref, tol=1e-5):
    assert len(ours) == len(ref)
    err = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    assert err < tol, f"max abs diff {err}"
    assert all(torch.isfinite(a).all() for a in ours)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_matches_diffusers(name, eta, prediction):
    betas = make_betas(name)
    ref_sched = _float64(DDIMScheduler(trained_betas=betas.numpy(), clip_sample=False, set_alpha_to_one=True,
                                       steps_offset=0, timestep_spacing="leading",
                                       prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction]), betas)
    ref = _diffusers_run(ref_sched, eps_fn, 50, seed=0, eta=eta)
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=0, sampler="ddim", steps=50, eta=eta, prediction=prediction)
    _assert_same_trajectory(ours, ref)


def test_ddim_sd_style_final_alpha_and_offset():
    """diffusers' Stable-Diffusion DDIM config: set_alpha_to_one=False, steps_offset=1 (LDM's DDIM)."""
    betas = make_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref_sched = _float64(DDIMScheduler(trained_betas=betas.numpy(), clip_sample=False, set_alpha_to_one=False,
                                       steps_offset=1), betas, final_alpha="first")
    ref = _diffusers_run(ref_sched, eps_fn, 25, seed=1, eta=0.5)
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=1, sampler="ddim", steps=25, eta=0.5, steps_offset=1,
                 final_alpha="first")
    _assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_zero_terminal_snr_trailing_v_prediction(sampler):
    """Lin et al. 2023 setup: rescaled betas, trailing spacing (starts at t = 999), v-prediction."""
    base = make_betas("scaled_linear", beta_start=0.00085, beta_end=0.012)
    betas_ref = rescale_zero_terminal_snr(base.clone())  # diffusers' own rescaling, in float64
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    ref_sched = _float64(cls(trained_betas=base.numpy(), rescale_betas_zero_snr=True, clip_sample=False,
                             timestep_spacing="trailing", prediction_type="v_prediction"), betas_ref)
    assert ref_sched.alphas_cumprod[-1] == 0
    kw = dict(eta=1.0) if sampler == "ddim" else {}
    ref = _diffusers_run(ref_sched, eps_fn, 20, seed=2, **kw)
    ours = _ours(NoiseSchedule.from_name("scaled_linear", beta_start=0.00085, beta_end=0.012, zero_terminal_snr=True),
                 eps_fn, seed=2, sampler=sampler, steps=20, prediction="v", timestep_spacing="trailing", **kw)
    _assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_respaced_matches_diffusers(name, prediction):
    betas = make_betas(name)
    ref_sched = _float64(DDPMScheduler(trained_betas=betas.numpy(), clip_sample=False, variance_type="fixed_small",
                                       prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction]), betas)
    ref = _diffusers_run(ref_sched, eps_fn, 50, seed=3)
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=3, sampler="ddpm", steps=50, prediction=prediction)
    _assert_same_trajectory(ours, ref)


def test_ddpm_full_chain_matches_diffusers():
    betas = make_betas("linear")
    ref_sched = _float64(DDPMScheduler(trained_betas=betas.numpy(), clip_sample=False), betas)
    ref = _diffusers_run(ref_sched, eps_fn, 1000, seed=4)
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=4, sampler="ddpm", steps=1000)
    _assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("linspace", 25)])
def test_ddpm_learned_range_matches_diffusers(spacing, steps):
    betas = make_betas("linear")
    ref_sched = _float64(DDPMScheduler(trained_betas=betas.numpy(), clip_sample=False, variance_type="learned_range",
                                       timestep_spacing=spacing), betas)
    ref = _diffusers_run(ref_sched, eps_var_fn, steps, seed=5)
    ours = _ours(NoiseSchedule(betas), eps_var_fn, seed=5, sampler="ddpm", steps=steps, learned_sigma=True,
                 timestep_spacing=spacing)
    _assert_same_trajectory(ours, ref)


def test_ddim_ignores_learned_variance_channels():
    betas = make_betas("linear")
    a = _ours(NoiseSchedule(betas), eps_var_fn, seed=6, sampler="ddim", steps=10, learned_sigma=True)
    b = _ours(NoiseSchedule(betas), eps_fn, seed=6, sampler="ddim", steps=10)
    _assert_same_trajectory(a, b, tol=1e-15)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_given_x_T_and_truncated_timesteps(sampler):
    """SDEdit / image-to-video start: a given x_T and a chain that starts 20 steps down."""
    betas = make_betas("linear")
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=F64)
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    ref_sched = _float64(cls(trained_betas=betas.numpy(), clip_sample=False), betas)
    kw = dict(eta=1.0) if sampler == "ddim" else {}
    ref = _diffusers_run(ref_sched, eps_fn, 50, seed=7, x_T=x_T, start=20, **kw)
    ts = spaced_timesteps(50, 1000, "leading")[20:]
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=7, sampler=sampler, timesteps=ts, x_T=x_T, **kw)
    _assert_same_trajectory(ours, ref)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_x0_matches_diffusers(sampler):
    betas = make_betas("linear")
    if sampler == "ddim":
        ref_sched = _float64(DDIMScheduler(trained_betas=betas.numpy(), clip_sample=True, clip_sample_range=0.5), betas)
        ref = _diffusers_run(ref_sched, eps_fn, 20, seed=8, eta=0.3, use_clipped_model_output=True)
        kw = dict(eta=0.3)
    else:
        ref_sched = _float64(DDPMScheduler(trained_betas=betas.numpy(), clip_sample=True, clip_sample_range=0.5), betas)
        ref = _diffusers_run(ref_sched, eps_fn, 20, seed=8)
        kw = {}
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=8, sampler=sampler, steps=20, clip_x0=0.5, **kw)
    _assert_same_trajectory(ours, ref)


def test_ddim_step_per_frame_alphas():
    """ddim_step takes per-frame noise levels (B, T): the same as stepping each frame on its own."""
    sched = NoiseSchedule.from_name("linear")
    x, out, noise = (torch.randn(SHAPE, dtype=F64) for _ in range(3))
    t, t_prev = torch.tensor([[900, 700, 500, 300], [999, 10, 20, 30]]), torch.tensor([[800, 600, 400, 200], [899, 0, 1, 2]])
    ab = sched.alphas_cumprod
    whole = ddim_step(out, x, ab[t], ab[t_prev], eta=0.7, prediction="v", noise=noise)
    for f in range(4):
        part = ddim_step(out[:, :, f:f + 1], x[:, :, f:f + 1], ab[t[:, f]], ab[t_prev[:, f]], eta=0.7, prediction="v",
                         noise=noise[:, :, f:f + 1])
        torch.testing.assert_close(whole.x_prev[:, :, f:f + 1], part.x_prev, rtol=0, atol=1e-12)
        torch.testing.assert_close(whole.pred_x0[:, :, f:f + 1], part.pred_x0, rtol=0, atol=1e-12)


def test_sampler_float32_and_errors():
    sched = NoiseSchedule.from_name("linear")
    x = sample(eps_fn, sched, SHAPE, steps=5, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == SHAPE and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="ddim"):
        sample(eps_fn, sched, SHAPE, sampler="euler")
    with pytest.raises(ValueError, match="leading"):
        sample(eps_fn, sched, SHAPE, timestep_spacing="karras")


# ----------------------------------------------------------------------------------------------
# classifier-free guidance
# ----------------------------------------------------------------------------------------------
class LabelModel(torch.nn.Module):
    """Output depends on the class label, counts its calls; 2C channels when learned_sigma."""

    def __init__(self, learned_sigma: bool):
        super().__init__()
        self.learned_sigma, self.calls = learned_sigma, []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        lab = cond.labels.to(x.dtype).view(-1, 1, 1, 1, 1)
        mean = torch.sin(x * (lab + 2)) + broadcast_timesteps(t, x).to(x.dtype) / 1000
        return torch.cat([mean, torch.tanh(x + lab)], 1) if self.learned_sigma else mean


@pytest.mark.parametrize("learned_sigma", [False, True])
def test_guidance_scale_one_is_conditional(learned_sigma):
    model = LabelModel(learned_sigma)
    x, t = torch.randn(SHAPE), torch.tensor([5, 600])
    cond, uncond = Conditioning(labels=torch.tensor([3, 7])), Conditioning(labels=torch.tensor([-1, -1]))
    out = classifier_free_guidance(model, x, t, cond, uncond, 1.0, learned_sigma)
    assert torch.equal(out, model(x, t, cond)) and model.calls == [2, 2]


@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("per_frame", [False, True])
def test_guidance_combines_mean_channels_only(learned_sigma, per_frame):
    model = LabelModel(learned_sigma)
    x = torch.randn(SHAPE, dtype=F64)
    t = torch.tensor([[5, 6, 7, 8], [600, 0, 1, 2]]) if per_frame else torch.tensor([5, 600])
    cond = Conditioning(labels=torch.tensor([3, 7]))
    uncond = cond.null()
    out = classifier_free_guidance(model, x, t, cond, uncond, 4.0, learned_sigma)
    assert model.calls == [4]  # one doubled batch
    c, u = model(x, t, cond), model(x, t, uncond)
    torch.testing.assert_close(out[:, :3], u[:, :3] + 4.0 * (c[:, :3] - u[:, :3]), rtol=1e-12, atol=1e-12)
    if learned_sigma:
        assert out.shape[1] == 6 and torch.equal(out[:, 3:], c[:, 3:])


def test_guided_model_fn_in_sampler():
    model = LabelModel(learned_sigma=True)
    cond = Conditioning(labels=torch.tensor([3, 7]))
    fn = guided_model_fn(model, cond, None, 3.0, learned_sigma=True)
    assert fn(torch.randn(SHAPE), 17).shape == (2, 6, 4, 5, 5)  # an int t is broadcast to the batch
    x = sample(fn, NoiseSchedule.from_name("linear"), SHAPE, sampler="ddpm", steps=4, learned_sigma=True,
               generator=torch.Generator().manual_seed(0))
    assert x.shape == SHAPE and torch.isfinite(x).all()


def _dpm_reference(betas_ab, timesteps, prediction, final="zero", seed=0, steps_lof=True):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2,
                                        solver_type="midpoint", lower_order_final=steps_lof,
                                        final_sigmas_type=final,
                                        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])
    sched.alphas_cumprod = betas_ab.to(F64).clone()  # float64 schedule, as the other parity tests
    sched.alpha_t = sched.alphas_cumprod.sqrt()
    sched.sigma_t = (1 - sched.alphas_cumprod).sqrt()
    sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    sched.set_timesteps(timesteps=timesteps)
    # diffusers stores its sigmas in float32; recompute them in float64 so the test compares the algorithm
    ab_t = betas_ab.to(F64)[torch.tensor(timesteps)]
    sched.sigmas = torch.cat([((1 - ab_t) / ab_t).sqrt(), torch.zeros(1, dtype=F64)])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=F64)
    # diffusers' step() casts the sample to float32; its update formulas are called directly here, in
    # float64, with step()'s order logic (first order first and last, second order between)
    traj, outputs = [], []
    n = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        sched._step_index = i
        out = sched.convert_model_output(eps_fn(x, torch.full((SHAPE[0],), int(t))), sample=x)
        outputs = [outputs[-1] if outputs else None, out]
        if i == 0 or (i == n - 1 and (final == "zero" or (steps_lof and n < 15))):
            x = sched.dpm_solver_first_order_update(out, sample=x)
        else:
            x = sched.multistep_dpm_solver_second_order_update(outputs, sample=x)
        traj.append(x)
    return traj


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_pp_2m_matches_diffusers(name, prediction, steps):
    betas = make_betas(name)
    ab = torch.cumprod(1 - betas, 0)
    timesteps = spaced_timesteps(steps, 1000, "leading")
    ref = _dpm_reference(ab, timesteps, prediction)
    ours = _ours(NoiseSchedule(betas), eps_fn, seed=0, sampler="dpm++2m", steps=steps, prediction=prediction)
    _assert_same_trajectory(ours, ref)


def test_dpm_solver_pp_2m_with_zero_terminal_snr_and_trailing_spacing():
    """The zero-SNR end is floored at 2**-24 (diffusers does the same with rescale_betas_zero_snr)."""
    sched = NoiseSchedule.from_name("cosine", zero_terminal_snr=True)
    ab = sched.alphas_cumprod.clone()
    assert ab[-1] == 0
    ab[-1] = 2.0 ** -24
    timesteps = spaced_timesteps(20, 1000, "trailing")
    ref = _dpm_reference(ab, timesteps, "v")
    ours = _ours(sched, eps_fn, seed=0, sampler="dpm++2m", steps=20, prediction="v", timestep_spacing="trailing")
    _assert_same_trajectory(ours, ref)
