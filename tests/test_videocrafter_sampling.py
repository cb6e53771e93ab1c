"""VideoCrafter's sampling (AILab-CVC/VideoCrafter): the x0 scale of VideoCrafter2 / VC1-1024 (``use_scale``,
``diffusion.x0_scale``) in training and in the samplers, temporal guidance (``unconditional_guidance_scale_temporal``,
``pipe(temporal_guidance=s)``) and the official sampling preset (configs/videocrafter/official-sampling.yaml).

The references are written here from the official code's formulas (lvdm/models/ddpm3d.py ``LatentDiffusion.__init__``
and ``q_sample``; lvdm/models/samplers/ddim.py ``make_schedule`` and ``p_sample_ddim``; lvdm/models/utils_diffusion.py
``make_ddim_timesteps`` and ``make_ddim_sampling_parameters``), in float64 numpy, independently of moviola's code.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from moviola import Conditioning
from moviola.autoencoders import IdentityAutoencoder
from moviola.config import ConfigError, load_config
from moviola.diffusion import (NoiseSchedule, build_schedule, classifier_free_guidance, ddim_step,
                               dpm_solver_pp_2m_step, make_betas, sample, spaced_timesteps, training_losses)
from moviola.diffusion.schedule import make_x0_scale
from moviola.models.videocrafter import VideoCrafter
from moviola.models.videocrafter.blocks import VideoConv, VideoTransformer
from moviola.pipelines import Pipeline

torch.set_num_threads(1)
PRESET = Path(__file__).resolve().parents[1] / "configs" / "videocrafter" / "official-sampling.yaml"
N = 1000
VC2 = dict(scale_a=1.0, scale_b=0.7, mid_step=400)


# ------------------------------------------------------------------ the official arrays, re-written from lvdm
def official_betas(start: float = 0.00085, end: float = 0.012, n: int = N) -> np.ndarray:
    """lvdm's make_beta_schedule('linear'): linspace of the square roots, squared (moviola's scaled_linear)."""
    return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2


def official_scale_arr(scale_a=1.0, scale_b=0.7, mid_step=400, n=N, fix_scale_bug=False) -> np.ndarray:
    """LatentDiffusion.__init__ with use_scale: the ramp, then scale_b (n values with the fix, n + mid_step without)."""
    rest = n - mid_step if fix_scale_bug else n
    return np.concatenate((np.linspace(scale_a, scale_b, mid_step), np.full(rest, scale_b)))


def official_ddim(eps_fn, x_T: np.ndarray, steps: int, eta: float, scale_arr, noises, betas=None) -> np.ndarray:
    """DDIMSampler.sample -> ddim_sampling -> p_sample_ddim (ddim_discretize='uniform', eps-prediction, no cfg)."""
    ac = np.cumprod(1.0 - (official_betas() if betas is None else betas))
    ts = np.asarray(list(range(0, N, N // steps))) + 1  # make_ddim_timesteps: "add one to get the final alpha right"
    alphas, alphas_prev = ac[ts], np.asarray([ac[0]] + ac[ts[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if scale_arr is not None:
        ddim_scale, ddim_scale_prev = scale_arr[ts], np.asarray([scale_arr[0]] + scale_arr[ts[:-1]].tolist())
    x = x_T
    total = ts.shape[0]
    for i, step in enumerate(np.flip(ts)):
        index = total - i - 1
        e_t = eps_fn(x, int(step))
        pred_x0 = (x - np.sqrt(1 - alphas[index]) * e_t) / np.sqrt(alphas[index])
        dir_xt = np.sqrt(1.0 - alphas_prev[index] - sigmas[index] ** 2) * e_t
        noise = sigmas[index] * noises[i]
        if scale_arr is not None:
            pred_x0 = pred_x0 / ddim_scale[index]
            x = np.sqrt(alphas_prev[index]) * ddim_scale_prev[index] * pred_x0 + dir_xt + noise
        else:
            x = np.sqrt(alphas_prev[index]) * pred_x0 + dir_xt + noise
    return x


def fake_eps(x, t: int):
    """A fixed fake model ε(x, t): smooth, elementwise, depends on the level (numpy or torch)."""
    lib = torch if torch.is_tensor(x) else np
    return 0.7 * lib.tanh(x) * (1 - t / 2000) + 0.1 * lib.sin(2 * x + t / 100)


def vc_schedule(**scale) -> NoiseSchedule:
    cfg = load_config(overrides=["diffusion.schedule=scaled_linear", "diffusion.beta_start=0.00085",
                                 "diffusion.beta_end=0.012", *[f"diffusion.x0_scale.{k}={v}" for k, v in scale.items()]])
    return build_schedule(cfg.diffusion)


# ------------------------------------------------------------------ 1. the x0 scale
@pytest.mark.parametrize("fix", [False, True], ids=["bug", "fix_scale_bug"])
@pytest.mark.parametrize("a,b,mid", [(1.0, 0.7, 400), (1.0, 0.3, 400), (0.9, 0.5, 10)])
def test_the_x0_scale_is_the_official_scale_arr(fix, a, b, mid):
    ours = make_x0_scale(N, a, b, mid)
    ref = official_scale_arr(a, b, mid, fix_scale_bug=fix)[:N]  # the official process reads t < N only
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-15)
    assert ours[0] == a and ours[mid - 1] == pytest.approx(b) and bool((ours[mid:] == b).all())


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("per_frame", [False, True])
def test_training_x_t_and_targets_follow_the_scaled_forward_process(prediction, per_frame):
    schedule = vc_schedule(**VC2)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 3, 3, generator=g), torch.randn(3, 2, 4, 3, 3, generator=g)
    t = torch.tensor([[3, 250, 399, 999], [400, 7, 0, 600], [999, 998, 1, 450]]) if per_frame else torch.tensor([5, 399, 900])
    out = training_losses(lambda x, tt, c: torch.zeros_like(x), schedule, x0, t, prediction=prediction, noise=noise)
    ac = np.cumprod(1.0 - official_betas())
    s = official_scale_arr(**VC2)
    tt = t.numpy()[:, None, :, None, None] if per_frame else t.numpy()[:, None, None, None, None]
    x0n, nn_ = x0.double().numpy(), noise.double().numpy()
    x_t = np.sqrt(ac[tt]) * x0n * s[tt] + np.sqrt(1 - ac[tt]) * nn_  # LatentDiffusion.q_sample with use_scale
    np.testing.assert_allclose(out["x_t"].double().numpy(), x_t, rtol=1e-6, atol=1e-6)
    target = {"eps": nn_, "x0": s[tt] * x0n,  # DynamiCrafter: x ← x · scale_arr[t], then the ordinary targets
              "v": np.sqrt(ac[tt]) * nn_ - np.sqrt(1 - ac[tt]) * s[tt] * x0n}[prediction]
    np.testing.assert_allclose(out["target"].double().numpy(), target, rtol=1e-6, atol=1e-6)


def test_self_conditioning_is_given_x0_itself():
    schedule, seen = vc_schedule(**VC2), []

    def model(x, t, cond):
        seen.append(cond.self_cond)
        return 2 * x  # an x0-prediction: the scaled data s_t x0
    x0, t = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(4)), torch.tensor([700])
    out = training_losses(model, schedule, x0, t, prediction="x0", self_cond=torch.tensor([True]))
    torch.testing.assert_close(seen[1], 2 * out["x_t"] / official_scale_arr(**VC2)[700])  # as the samplers' pred_x0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_the_x0_scale_is_the_official_ddim_trajectory(eta):
    """50 DDIM steps of the official sampler (leading + 1, the last step to alphas_cumprod[0]) against moviola's."""
    shape = (2, 3, 4, 5, 5)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(shape, generator=g, dtype=torch.float64)
    noises = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(50)]
    ref = official_ddim(fake_eps, x_T.numpy(), 50, eta, official_scale_arr(**VC2), [n.numpy() for n in noises])
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return fake_eps(x, int(t[0]))
    ours = sample(model, vc_schedule(**VC2), shape, sampler="ddim", steps=50, eta=eta, steps_offset=1,
                  final_alpha="first", x_T=x_T, noise_fn=lambda i, x: noises[i])
    assert seen == list(range(981, 0, -20))  # the official ddim_timesteps, noisiest first
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)
    # and the option changes the trajectory: without it, it is the official sampler with use_scale off
    plain = sample(model, vc_schedule(), shape, sampler="ddim", steps=50, eta=eta, steps_offset=1,
                   final_alpha="first", x_T=x_T, noise_fn=lambda i, x: noises[i])
    np.testing.assert_allclose(plain.numpy(), official_ddim(fake_eps, x_T.numpy(), 50, eta, None,
                                                            [n.numpy() for n in noises]), rtol=1e-6, atol=1e-6)
    assert np.abs(plain.numpy() - ref).max() > 1e-2


def test_the_x0_estimate_is_x0_itself_and_a_unit_scale_changes_nothing():
    shape = (1, 2, 3, 4, 4)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    estimates = []
    kw = dict(sampler="ddim", steps=10, x_T=x_T, callback=lambda i, t, x, x0: estimates.append((t, x0)))
    sample(lambda x, t: fake_eps(x, int(t[0])), vc_schedule(**VC2), shape, **kw)
    ac, s = np.cumprod(1.0 - official_betas()), official_scale_arr(**VC2)
    # the official p_sample_ddim returns pred_x0 / scale_t; check the first step by hand
    t0, est0 = estimates[0]
    by_hand = (x_T.numpy() - np.sqrt(1 - ac[t0]) * fake_eps(x_T.numpy(), t0)) / np.sqrt(ac[t0]) / s[t0]
    np.testing.assert_allclose(est0.numpy(), by_hand, rtol=1e-10, atol=1e-10)
    for sampler in ("ddim", "dpm++2m"):  # s ≡ 1 is the ordinary process
        ones = sample(lambda x, t: fake_eps(x, int(t[0])), vc_schedule(scale_a=1.0, scale_b=1.0), shape,
                      sampler=sampler, steps=10, x_T=x_T)
        plain = sample(lambda x, t: fake_eps(x, int(t[0])), vc_schedule(), shape, sampler=sampler, steps=10, x_T=x_T)
        torch.testing.assert_close(ones, plain, rtol=1e-12, atol=1e-12)


def test_dpm_solver_with_the_x0_scale_is_ddim_at_first_order():
    g = torch.Generator().manual_seed(3)
    x, out = torch.randn(2, 2, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 2, 3, 3, 3, generator=g,
                                                                                          dtype=torch.float64)
    ab = torch.cumprod(1 - make_betas("scaled_linear", N, 0.00085, 0.012), 0)
    s = make_x0_scale(N, **VC2)
    for hi, lo in ((901, 501), (501, 201), (201, 1)):
        ddim = ddim_step(out, x, ab[hi], ab[lo], scale_t=s[hi], scale_prev=s[lo])
        dpm, est, _ = dpm_solver_pp_2m_step(out, x, ab[hi], ab[lo], None, first_order=True, scale_s=s[hi], scale_t=s[lo])
        torch.testing.assert_close(dpm, ddim.x_prev, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(est, ddim.pred_x0, rtol=1e-12, atol=1e-12)
    # a whole dpm++2m walk with the scale runs and differs from the unscaled one
    x_T = torch.randn(1, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    a = sample(lambda x, t: fake_eps(x, int(t[0])), vc_schedule(**VC2), x_T.shape, sampler="dpm++2m", steps=12, x_T=x_T)
    b = sample(lambda x, t: fake_eps(x, int(t[0])), vc_schedule(), x_T.shape, sampler="dpm++2m", steps=12, x_T=x_T)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3


def test_the_scale_is_refused_where_it_is_not_defined():
    schedule = vc_schedule(**VC2)
    with pytest.raises(ValueError, match="ddpm sampler has no step for an x0-scaled process"):
        sample(lambda x, t: x, schedule, (1, 2, 2, 2, 2), sampler="ddpm", steps=2)
    with pytest.raises(ValueError, match="learned_sigma"):
        training_losses(lambda x, t, c: torch.cat([x, x], 1), schedule, torch.zeros(1, 2, 2, 2, 2),
                        torch.tensor([3]), learned_sigma=True)
    for extra, words in ((["sample.sampler=ddpm"], "sample.sampler=ddpm"),
                         (["model.learned_sigma=true"], "model.learned_sigma"),
                         (["diffusion.x0_scale.mid_step=1001"], "mid_step"),
                         (["diffusion.x0_scale.scale_b=0"], "diffusion.x0_scale.scale_b"),
                         (["diffusion.steps_offset=1", "diffusion.timestep_spacing=trailing"], "steps_offset"),
                         (["diffusion.steps_offset=1", "sample.steps=1000"], "sample.steps=1000")):
        with pytest.raises(ConfigError, match=words):
            load_config(overrides=["diffusion.x0_scale.scale_b=0.7", *extra])
    cfg = load_config(overrides=["diffusion.x0_scale.scale_b=0.7", "data.size=8", "data.frames=3"])
    pipe = Pipeline(torch.nn.Identity(), IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu")
    with pytest.raises(ValueError, match="ddpm sampler has no step"):
        pipe(sampler="ddpm", steps=2)  # before any model call (the identity would fail the protocol)
    assert load_config().diffusion.x0_scale is None  # off by default
    assert build_schedule(load_config().diffusion).x0_scale is None
    resp = schedule.respaced([1, 401, 981])
    assert resp.x0_scale.tolist() == schedule.x0_scale[[1, 401, 981]].tolist()


# ------------------------------------------------------------------ 2. temporal guidance
SMALL = ["model.family=videocrafter", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
         "model.num_heads=2", "model.norm_num_groups=8", "autoencoder.kind=identity", "data.size=8",
         "data.frames=4", "conditions.num_classes=4", "sample.steps=2"]


def perturb_temporal(model: VideoCrafter, seed: int = 1) -> VideoCrafter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameter_groups("temporal"):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def vc_pipe(perturbed: bool = True) -> tuple[Pipeline, VideoCrafter]:
    cfg = load_config(overrides=SMALL)
    torch.manual_seed(0)
    model = VideoCrafter.from_config(cfg.model, cfg.conditions, 3).eval()
    if perturbed:
        perturb_temporal(model)
    return Pipeline(model, IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu"), model


def inputs(B: int = 2):
    g = torch.Generator().manual_seed(5)
    return torch.randn(B, 3, 4, 8, 8, generator=g), torch.tensor([600] * B), Conditioning(labels=torch.arange(B) % 4)


def without_attention(model: VideoCrafter) -> VideoCrafter:
    """A copy whose temporal transformers are the identity (the temporal convolutions kept)."""
    import copy

    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, VideoTransformer):
            m.forward = lambda h, video: h
    return ref


@torch.no_grad()
def test_skipping_the_temporal_attention_of_an_untrained_model_changes_nothing():
    _, model = vc_pipe(perturbed=False)
    x, t, cond = inputs()
    assert model.supports_temporal_guidance
    with model.skipping_temporal_attention():
        skipped = model(x, t, cond)
    assert torch.equal(skipped, model(x, t, cond))  # zero-initialized proj_out: the layers add nothing yet


@torch.no_grad()
def test_skipping_the_temporal_attention_of_a_trained_model_drops_exactly_the_attention():
    _, model = vc_pipe()
    x, t, cond = inputs()
    full = model(x, t, cond)
    with model.skipping_temporal_attention(True):
        skipped = model(x, t, cond)
    assert (skipped - full).abs().max() > 1e-3
    torch.testing.assert_close(skipped, without_attention(model)(x, t, cond), rtol=0, atol=0)
    # the temporal convolutions stay: without them too (the spatial U-Net frame by frame) the output differs
    spatial = without_attention(model)
    for m in spatial.modules():
        if isinstance(m, VideoConv):
            m.forward = lambda h, video: h
    assert (skipped - spatial(x, t, cond)).abs().max() > 1e-3
    # a per-example mask skips only those examples; leaving the block restores the model
    with model.skipping_temporal_attention(torch.tensor([False, True])):
        mixed = model(x, t, cond)
    torch.testing.assert_close(mixed[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], skipped[1], rtol=0, atol=1e-6)
    assert torch.equal(model(x, t, cond), full)


@pytest.mark.parametrize("cfg,s", [(3.0, 0.5), (1.0, 2.0), (3.0, -1.0)])
def test_temporal_guidance_adds_its_term_to_the_guided_output(monkeypatch, cfg, s):
    from moviola.pipelines import base

    monkeypatch.setattr(base, "sample", lambda fn, schedule, shape, x_T, **kw: fn(x_T, torch.full((shape[0],), 600)))
    pipe, model = vc_pipe()
    conds = pipe.conditions(2, 4, 8, 8, labels=[1, 3])
    x = inputs()[0]
    out = pipe.denoise(conds, x, [torch.Generator()], cfg, "ddim", 1, 0.0, temporal_guidance=s)
    with torch.no_grad():  # by hand, each branch its own model call
        t = torch.full((2,), 600)
        f_c, f_u = model(x, t, conds.cond), model(x, t, conds.uncond)
        with model.skipping_temporal_attention():
            f_n = model(x, t, conds.cond)
    expected = f_u + cfg * (f_c - f_u) + s * (f_c - f_n)  # e ← e_cfg + s·(e(c) − e(c, no temporal attention))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (out - pipe.denoise(conds, x, [torch.Generator()], cfg, "ddim", 1, 0.0)).abs().max() > 1e-4


def test_temporal_guidance_zero_is_todays_video_bit_for_bit():
    pipe, model = vc_pipe()
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    today = pipe(labels=[1, 2], steps=2, cfg=3.0, seed=0)
    assert calls == [4, 4]
    calls.clear()
    assert torch.equal(pipe(labels=[1, 2], steps=2, cfg=3.0, seed=0, temporal_guidance=0.0), today)
    assert calls == [4, 4]
    calls.clear()
    other = pipe(labels=[1, 2], steps=2, cfg=3.0, seed=0, temporal_guidance=1.5)
    assert calls == [6, 6] and (other - today).abs().max() > 1e-4  # one more branch in the same batch


def test_the_helper_places_the_temporal_branch_after_context_guidance():
    """Every term at once, with a fake model that can skip its 'temporal attention' per example."""
    import contextlib

    class Fake(torch.nn.Module):
        skip = None

        @contextlib.contextmanager
        def skipping_temporal_attention(self, mask):
            self.skip = mask
            yield
            self.skip = None

        def forward(self, x, t, cond):
            temporal = 0.3 * torch.roll(x, 1, dims=2)
            if self.skip is not None:
                temporal = temporal * (~self.skip).float()[:, None, None, None, None]
            return x + cond.labels.float()[:, None, None, None, None] + 5 * cond.context_mask + temporal

    model = Fake()
    x, m = torch.randn(2, 3, 4, 2, 2), torch.ones(2, 1, 4, 1, 1)
    cond = Conditioning(labels=torch.tensor([2, 3]), context=x * m, context_mask=m)
    uncond, no_frames = cond.null(["labels"]), cond.null(["context"])
    out = classifier_free_guidance(model, x, 5, cond, uncond, 4.0, False, no_frames, 1.5, temporal_scale=2.0)
    t = torch.tensor([5, 5])
    f_c, f_u, f_f = model(x, t, cond), model(x, t, uncond), model(x, t, no_frames)
    with model.skipping_temporal_attention(torch.ones(2, dtype=torch.bool)):
        f_n = model(x, t, cond)
    torch.testing.assert_close(out, f_u + 4.0 * (f_c - f_u) + 0.5 * (f_c - f_f) + 2.0 * (f_c - f_n))


def test_a_model_that_cannot_skip_its_temporal_attention_is_refused_before_sampling():
    class Plain(torch.nn.Module):
        accepts, learned_sigma = frozenset({"labels"}), False

        def forward(self, x, t, cond=None, num_images=0):
            raise AssertionError("never called")

    cfg = load_config(overrides=["conditions.num_classes=4", "data.size=8", "data.frames=4"])
    pipe = Pipeline(Plain(), IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu")
    with pytest.raises(ValueError, match="temporal_guidance=2: this model cannot be evaluated without its temporal"):
        pipe(labels=[1], steps=2, temporal_guidance=2.0)
    for bad, error in ((float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="temporal_guidance"):
            vc_pipe()[0](labels=[1], steps=2, temporal_guidance=bad)


def test_the_cli_passes_temporal_guidance_through():
    from moviola.cli import build_parser
    from moviola.cli import sample as sample_cli

    args = build_parser().parse_args(["sample", "ckpt", "--temporal-guidance", "2.5", "--out", "v.mp4", "--quiet"])
    assert args.temporal_guidance == 2.5
    assert build_parser().parse_args(["sample", "ckpt", "--out", "v.mp4"]).temporal_guidance == 0.0
    calls = []

    def pipe(**kwargs):
        calls.append(kwargs)
        return torch.zeros(kwargs["num_videos"], 3, 1, 2, 2)
    sample_cli.generate(pipe, args, None, None)
    assert [c["temporal_guidance"] for c in calls] == [2.5]
    bad = build_parser().parse_args(["sample", "ckpt", "--temporal-guidance", "inf", "--out", "v.mp4"])
    with pytest.raises(ValueError, match="--temporal-guidance must be a finite number"):
        sample_cli._check_sample_args(bad)


# ------------------------------------------------------------------ 3. the official sampling preset
def load_preset(tmp_path: Path):
    """The preset with a stand-in SD VAE directory (only its config.json is read) and a video folder."""
    import json

    (tmp_path / "vae").mkdir(exist_ok=True)
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
    return load_config(PRESET, [f"data.root={tmp_path}", f"autoencoder.path={tmp_path / 'vae'}"])


def test_the_preset_is_the_official_script(tmp_path):
    """scripts/run_text2video.sh: DDIM 50 steps, eta 1.0, cfg 12, fps 28; configs/inference_t2v_512_v2.0.yaml:
    linear_start 0.00085, linear_end 0.012, 1000 timesteps, eps, use_scale with scale_b 0.7."""
    cfg = load_preset(tmp_path)
    s, d = cfg.sample, cfg.diffusion
    assert (s.sampler, s.steps, s.cfg, s.eta) == ("ddim", 50, 12.0, 1.0)
    assert (d.schedule, d.beta_start, d.beta_end, d.num_timesteps, d.prediction) == ("scaled_linear", 0.00085, 0.012,
                                                                                      1000, "eps")
    assert (d.timestep_spacing, d.steps_offset, d.final_alpha) == ("leading", 1, "first")
    assert dataclasses.asdict(d.x0_scale) == VC2
    assert spaced_timesteps(s.steps, N, d.timestep_spacing, d.steps_offset) == list(range(981, 0, -20))
    np.testing.assert_allclose(build_schedule(d).betas.numpy(), official_betas(), rtol=1e-12, atol=0)
    assert cfg.conditions.fps and "--fps 28" in PRESET.read_text()


def test_the_preset_samples_what_the_official_sampler_samples(tmp_path):
    """Through the pipeline (per-video generators, eta 1.0): the official DDIM with use_scale, the same noise."""
    preset = load_preset(tmp_path)
    cfg = load_config(overrides=["data.size=8", "data.frames=3", "sample.steps=50"],
                      data={"diffusion": dataclasses.asdict(preset.diffusion)})

    class Eps(torch.nn.Module):
        accepts, learned_sigma = frozenset(), False

        def forward(self, x, t, cond=None, num_images=0):
            return fake_eps(x, int(t[0]))

    pipe = Pipeline(Eps(), IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu")
    conds = pipe.conditions(2, 3, 8, 8)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    x_T = torch.cat([torch.randn((1, 3, 3, 8, 8), generator=g) for g in gens])
    z = pipe.denoise(conds, x_T, gens, 1.0, "ddim", 50, 1.0)
    # the official loop, drawing each step's noise from the same generators in the same order
    again = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    for g in again:
        torch.randn((1, 3, 3, 8, 8), generator=g)  # x_T
    noises = []
    for _ in range(50):
        noises.append(torch.cat([torch.randn((1, 3, 3, 8, 8), generator=g) for g in again]).double().numpy())
    ref = official_ddim(fake_eps, x_T.double().numpy(), 50, 1.0, official_scale_arr(**VC2), noises)
    np.testing.assert_allclose(z.double().numpy(), ref, rtol=1e-5, atol=1e-5)
