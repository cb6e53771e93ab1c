"""Timestep plans (moviola.diffusion.plans) and the samplers walking them.

The reference for a per-frame plan is each frame sampled on its own with an ordinary plan (its
column of the plan, the steps where it keeps its level dropped): a model that acts frame by frame
must then give the same frame, at its own levels, whatever the other frames do. The ordinary plan
is itself pinned against diffusers in test_diffusion.py. Noise comes from a bank indexed by step,
so the stochastic samplers give a frame the same draws alone and together.
"""
import dataclasses

import pytest
import torch

from moviola.conditioning import Conditioning
from moviola.diffusion import (CLEAN, NoiseSchedule, SamplerState, broadcast_timesteps, ddim_step,
                               diagonal_plan, dpm_solver_pp_2m_step, frame_offsets_plan, guided_model_fn,
                               plan_targets, sample, spaced_timesteps, uniform_plan, validate_plan,
                               with_clean_frames)

F64 = torch.float64
SHAPE = (2, 3, 4, 5, 5)  # (B, C, T, H, W)
SCHED = NoiseSchedule.from_name("linear")


def framewise_eps(x, t):
    """A stand-in denoiser whose output for a frame depends only on that frame's x_t and t."""
    return torch.sin(3 * x + broadcast_timesteps(t, x).to(x.dtype) / 300.0)


def framewise_eps_var(x, t):
    """2C channels: a mean and a learned-range value in [-1, 1], frame by frame."""
    tt = broadcast_timesteps(t, x).to(x.dtype)
    return torch.cat([framewise_eps(x, t), torch.tanh(2 * x - tt / 500.0)], dim=1)


def per_frame(t):
    """A model's t as (B, T): a (B,) t is every frame at one level."""
    return t if t.dim() == 2 else t[:, None].expand(-1, SHAPE[2])


def mixed_plan():
    """Four frames, each at its own levels: leading and trailing spacing, a frame that waits at full
    noise and finishes a step early, and one that holds a level in the middle."""
    cols = [spaced_timesteps(6, 1000, "leading"), spaced_timesteps(6, 1000, "trailing"),
            [999, 999, 700, 400, 100, CLEAN], [500, 300, 300, 200, 50, 10]]
    return torch.tensor(cols).T.contiguous()  # (T, steps) -> (steps, T)


def noise_bank(steps, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(steps)]


def run_alone(plan, f, x_T, bank, **kw):
    """Frame f on its own: its column without the steps where it keeps its level, the same noise per step."""
    col, target = plan[:, f], plan_targets(plan)[:, f]
    rows = [i for i in range(len(col)) if col[i] != target[i]]
    return sample(framewise_eps_var if kw.get("learned_sigma") else framewise_eps, SCHED,
                  x_T[:, :, f:f + 1].shape, plan=col[rows][:, None], x_T=x_T[:, :, f:f + 1].clone(),
                  noise_fn=lambda j, x: bank[rows[j]][:, :, f:f + 1], **kw)


# ----------------------------------------------------------------------------------------------
# building and checking plans
# ----------------------------------------------------------------------------------------------
def test_uniform_plan_repeats_each_level():
    ts = spaced_timesteps(5, 1000, "leading")
    plan = uniform_plan(ts, 3)
    assert plan.dtype == torch.long and plan.shape == (5, 3)
    assert plan.tolist() == [[t] * 3 for t in ts]
    assert plan_targets(plan).tolist() == [[t] * 3 for t in ts[1:]] + [[CLEAN] * 3]


def test_frame_offsets_and_diagonal_plans():
    plan = frame_offsets_plan([30, 20, 10], [0, 2, 1])
    assert plan.tolist() == [[30, 30, 30],  # frames 1 and 2 wait at the first level
                             [20, 30, 30],
                             [10, 30, 20],
                             [CLEAN, 20, 10],  # frame 0 is finished
                             [CLEAN, 10, CLEAN]]  # frame 1 finishes last
    assert torch.equal(frame_offsets_plan([30, 20, 10], [5, 7, 6]), plan)  # only differences count
    assert diagonal_plan([30, 20, 10], 3, lag=1).tolist() == [[30, 30, 30], [20, 30, 30], [10, 20, 30],
                                                              [CLEAN, 10, 20], [CLEAN, CLEAN, 10]]
    assert torch.equal(diagonal_plan([30, 20, 10], 4, lag=0), uniform_plan([30, 20, 10], 4))


def test_with_clean_frames():
    plan = with_clean_frames(uniform_plan([30, 20, 10], 3), torch.tensor([True, False, False]))
    assert plan[:, 0].tolist() == [CLEAN] * 3 and plan[:, 1:].tolist() == [[30, 30], [20, 20], [10, 10]]
    with pytest.raises(ValueError, match=r"\(T,\) mask"):
        with_clean_frames(plan, [True, False])


@pytest.mark.parametrize("plan,frames,match", [
    (torch.zeros(3, 4), None, "integer timesteps"),
    (torch.zeros(3, dtype=torch.long), None, r"shape \(steps, T\)"),
    (torch.zeros(0, 4, dtype=torch.long), None, r"shape \(steps, T\)"),
    (uniform_plan([20, 10], 3), 4, "3 frames .* has 4"),
    (torch.tensor([[1000, 5], [10, 4]]), None, r"\[0, 1000\) or CLEAN .* step 0, frame 0 is 1000"),
    (torch.tensor([[20, 5], [10, -2]]), None, "step 1, frame 1 is -2"),
    (torch.tensor([[20, 5], [10, 8]]), None, "frame 1 goes from 5 at step 0 to 8 at step 1"),
    (torch.tensor([[20, 5], [20, 5], [10, 4]]), None, "step 0 moves no frame"),
    (torch.tensor([[CLEAN, CLEAN]]), None, "step 0 moves no frame"),
])
def test_bad_plans_are_value_errors(plan, frames, match):
    with pytest.raises(ValueError, match=match):
        validate_plan(plan, 1000, frames)


def test_bad_plans_in_sample():
    with pytest.raises(ValueError, match="strictly decreasing"):
        uniform_plan([10, 20], 4)
    with pytest.raises(ValueError, match="not both"):
        sample(framewise_eps, SCHED, SHAPE, timesteps=[20, 10], plan=uniform_plan([20, 10], 4))
    with pytest.raises(ValueError, match="3 frames"):
        sample(framewise_eps, SCHED, SHAPE, plan=uniform_plan([20, 10], 3))
    with pytest.raises(ValueError, match="must not rise"):
        sample(framewise_eps, SCHED, SHAPE, plan=torch.tensor([[20] * 4, [30] * 4]))


# ----------------------------------------------------------------------------------------------
# every frame at its own level
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,kw", [
    ("ddim", {}),
    ("ddim", dict(eta=0.8, prediction="v")),
    ("ddim", dict(final_alpha="first")),
    ("ddpm", {}),
    ("ddpm", dict(learned_sigma=True, prediction="v")),
    ("ddpm", dict(clip_x0=0.5)),
    ("dpm++2m", {}),
    ("dpm++2m", dict(prediction="v", final_alpha="first")),
])
@pytest.mark.parametrize("which", ["mixed", "diagonal12", "diagonal16"])
def test_each_frame_runs_at_its_own_level(sampler, kw, which):
    # DPM-Solver's last step is first order for a frame of < 15 steps: 12 levels (in a plan of 18 rows),
    # and second order with 16
    if which == "mixed":
        plan = mixed_plan()
    else:
        plan = diagonal_plan(spaced_timesteps(int(which[8:]), 1000, "trailing"), 4, lag=2)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    bank = noise_bank(plan.shape[0])
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return (framewise_eps_var if kw.get("learned_sigma") else framewise_eps)(x, t)

    whole = sample(model, SCHED, SHAPE, sampler=sampler, plan=plan, x_T=x_T.clone(),
                   noise_fn=lambda i, x: bank[i], **kw)
    for i, t in enumerate(seen):  # each frame's level, 0 for a clean frame; (B,) when the row shares one
        uniform = bool((plan[i].clamp(min=0) == plan[i].clamp(min=0)[0]).all())
        assert t.shape == ((2,) if uniform else (2, 4))
        assert per_frame(t).tolist() == [plan[i].clamp(min=0).tolist()] * 2
    for f in range(4):
        alone = run_alone(plan, f, x_T, bank, sampler=sampler, **kw)
        torch.testing.assert_close(whole[:, :, f:f + 1], alone, rtol=0, atol=1e-10, msg=lambda m: f"frame {f}: {m}")


def test_waiting_and_finished_frames_are_left_as_they_are():
    plan = diagonal_plan(spaced_timesteps(5, 1000, "leading"), 4, lag=1)
    x_T = torch.randn(SHAPE, dtype=F64)
    xs = []
    sample(framewise_eps, SCHED, SHAPE, plan=plan, x_T=x_T, callback=lambda i, t, x, x0: xs.append(x))
    for i, x in enumerate(xs):
        for f in range(4):
            if plan[i, f] == plan_targets(plan)[i, f]:  # kept its level at step i
                before = x_T if i == 0 else xs[i - 1]
                assert torch.equal(x[:, :, f], before[:, :, f]), (i, f)


# ----------------------------------------------------------------------------------------------
# ordinary sampling is the uniform plan, bit for bit
# ----------------------------------------------------------------------------------------------
def reference_loop(sampler, timesteps, x, model, generator, eta=0.0):
    """The loop sample() ran before plans: a respaced schedule walked by index, float32, scalar alphas."""
    sub = SCHED.respaced(timesteps)
    history = None
    for i, idx in enumerate(range(sub.num_timesteps - 1, -1, -1)):
        out = model(x, torch.full((x.shape[0],), int(sub.timestep_map[idx])))
        ab_prev = sub.alphas_cumprod[idx - 1] if idx > 0 else torch.ones((), dtype=F64)
        if sampler == "ddim":
            x = ddim_step(out, x, sub.alphas_cumprod[idx], ab_prev, eta=eta, generator=generator).x_prev
        elif sampler == "dpm++2m":
            first = i == 0 or (idx == 0 and sub.num_timesteps < 15)
            x, _, history = dpm_solver_pp_2m_step(out, x, sub.alphas_cumprod[idx], ab_prev, history, first_order=first)
        else:  # the schedule's own posterior arrays
            x0 = sub.to_x0(out, "eps", x, idx)
            mean, _, log_var = sub.q_posterior(x0, x, idx)
            x = mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=generator) if idx > 0 else mean
    return x


@pytest.mark.parametrize("sampler,steps,eta", [("ddim", 10, 0.0), ("ddim", 10, 0.6), ("ddpm", 10, 0.0),
                                               ("dpm++2m", 8, 0.0), ("dpm++2m", 16, 0.0)])
def test_uniform_plan_is_bit_identical_to_the_old_loop(sampler, steps, eta):
    ts = spaced_timesteps(steps, 1000, "leading")
    shapes = []

    def model(x, t):
        shapes.append(tuple(t.shape))
        return framewise_eps(x, t)

    x = sample(model, SCHED, SHAPE, sampler=sampler, steps=steps, eta=eta, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    ref = reference_loop(sampler, ts, torch.randn(SHAPE, generator=g), framewise_eps, g, eta)
    assert x.dtype == torch.float32 and torch.equal(x, ref)
    assert shapes == [(2,)] * steps  # one level per row: the model gets (B,), as before
    y = sample(framewise_eps, SCHED, SHAPE, sampler=sampler, plan=uniform_plan(ts, 4), eta=eta,
               generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, y)


def test_images_take_a_one_frame_plan():
    def model(x, t):
        return torch.sin(3 * x + t.to(x.dtype).view(-1, 1, 1, 1) / 300.0)

    x = sample(model, SCHED, (2, 3, 5, 5), steps=4, generator=torch.Generator().manual_seed(0))
    y = sample(model, SCHED, (2, 3, 5, 5), plan=uniform_plan(spaced_timesteps(4), 1),
               generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 5, 5) and torch.equal(x, y)


# ----------------------------------------------------------------------------------------------
# clean (given) frames
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,kw", [("ddim", dict(eta=0.5)), ("ddim", dict(final_alpha="first")),
                                        ("ddpm", {}), ("dpm++2m", {})])
def test_clean_frames_stay_fixed_and_the_rest_is_unchanged(sampler, kw):
    ts = spaced_timesteps(6, 1000, "leading")
    mask = torch.tensor([True, False, False, True])
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=F64)
    bank = noise_bank(len(ts))
    seen, x0s = [], []

    def model(x, t):
        seen.append(t.clone())
        return framewise_eps(x, t)

    plan = with_clean_frames(uniform_plan(ts, 4), mask)
    out = sample(model, SCHED, SHAPE, sampler=sampler, plan=plan, x_T=x_T.clone(), noise_fn=lambda i, x: bank[i],
                 callback=lambda i, t, x, x0: x0s.append(x0), **kw)
    assert torch.equal(out[:, :, mask], x_T[:, :, mask])  # exactly the given frames
    assert all(torch.equal(x0[:, :, mask], x_T[:, :, mask]) for x0 in x0s)  # a clean frame is its own estimate
    assert all((per_frame(t)[:, mask] == 0).all() and (per_frame(t)[:, ~mask] == ts[i]).all()
               for i, t in enumerate(seen))
    plain = sample(framewise_eps, SCHED, SHAPE, sampler=sampler, plan=uniform_plan(ts, 4), x_T=x_T.clone(),
                   noise_fn=lambda i, x: bank[i], **kw)
    torch.testing.assert_close(out[:, :, ~mask], plain[:, :, ~mask], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# state between steps
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m"])
def test_state_carries_the_previous_x0_estimate(sampler):
    given, states, x0s = [], [], []

    def model(x, t, state):
        assert isinstance(state, SamplerState)
        given.append(None if state.pred_x0 is None else state.pred_x0.clone())
        state.memory["calls"] = state.memory.get("calls", 0) + 1
        states.append((state.step, state.levels.tolist(), state.memory["calls"]))
        return framewise_eps(x, t)

    plan = mixed_plan()
    sample(model, SCHED, SHAPE, sampler=sampler, plan=plan, generator=torch.Generator().manual_seed(0),
           callback=lambda i, t, x, x0: x0s.append(x0.clone()))
    assert given[0] is None
    for i in range(1, len(given)):
        assert torch.equal(given[i], x0s[i - 1])
    assert states == [(i, plan[i].tolist(), i + 1) for i in range(plan.shape[0])]
    plain = sample(framewise_eps, SCHED, SHAPE, sampler=sampler, plan=plan, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(plain).all()  # a plain (x_t, t) function is still called without a state


class SelfCondModel(torch.nn.Module):
    """Depends on the label and on the self-conditioning input; records what it is given."""

    def __init__(self):
        super().__init__()
        self.self_conds = []

    def forward(self, x, t, cond):
        self.self_conds.append(cond.self_cond.clone())
        lab = cond.labels.to(x.dtype).view(-1, 1, 1, 1, 1)
        return torch.sin(x * (lab + 2) + 0.5 * cond.self_cond) + broadcast_timesteps(t, x).to(x.dtype) / 1000


def test_guided_self_conditioning_gets_the_previous_estimate():
    model = SelfCondModel()
    cond = Conditioning(labels=torch.tensor([3, 7]))
    fn = guided_model_fn(model, cond, None, 3.0, self_condition=True)
    x0s = []
    sample(fn, SCHED, SHAPE, steps=4, generator=torch.Generator().manual_seed(0),
           callback=lambda i, t, x, x0: x0s.append(x0))
    assert len(model.self_conds) == 4  # one doubled batch per step
    assert torch.equal(model.self_conds[0], torch.zeros(4, *SHAPE[1:]))
    for i in range(1, 4):  # both halves (conditional, null label) see the previous guided estimate
        assert torch.equal(model.self_conds[i], torch.cat([x0s[i - 1], x0s[i - 1]]))
    assert cond.self_cond is None  # the caller's conditioning is not changed
    state = SamplerState(pred_x0=torch.ones(SHAPE))
    out = fn(torch.zeros(SHAPE), torch.tensor([5, 5]), state)
    u = dataclasses.replace(cond.null(), self_cond=torch.ones(SHAPE))
    c = dataclasses.replace(cond, self_cond=torch.ones(SHAPE))
    mc, mu = model(torch.zeros(SHAPE), torch.tensor([5, 5]), c), model(torch.zeros(SHAPE), torch.tensor([5, 5]), u)
    torch.testing.assert_close(out, mu + 3.0 * (mc - mu))
