"""Video LDM's context frames (Blattmann et al. 2023, §3.2): the 0/1/2-frame prediction mode, the
interpolation model's keyframes, and context guidance at sampling,
``f' = f_cfg + (s − 1)·(f(c, S) − f(c, ∅_S))``.

The masks of the older modes and today's sampled videos are pinned with values the code computed
before these were added, so old runs keep their batches and ``context_guidance=1`` its outputs.
"""
from __future__ import annotations

import pytest
import torch

from moviola.autoencoders import IdentityAutoencoder
from moviola.conditioning.context import context_mask
from moviola.config import load_config
from moviola.diffusion import build_schedule
from moviola.pipelines import Pipeline

FRAMES, SIZE = 5, 8


# ------------------------------------------------------------------ context masks
def given(mask: torch.Tensor) -> list[list[int]]:
    """The given frame indices of each example of a ``(B, 1, T, 1, 1)`` mask."""
    return [torch.nonzero(row).flatten().tolist() for row in mask[:, 0, :, 0, 0]]


# what context_mask(mode, 8, 8, Generator().manual_seed(2024)) gave before prefix2 and keyframes existed,
# and the next draw of that generator (the trainer's context dropout follows the mask's draws)
PINNED = {
    "first": [[0]] * 8,
    "prefix": [[0, 1], [0, 1, 2, 3], [0, 1], [0], [0, 1, 2, 3], [0, 1, 2], [0, 1, 2], [0]],
    "ends": [[0, 7]] * 8,
    "any": [[0, 7], [0, 7], [0, 1], [0, 7], [0], [0, 7], [0, 1, 2], [0, 7]],
}
PINNED_NEXT = [781, 660, 921, 790]


@pytest.mark.parametrize("mode", list(PINNED))
def test_the_older_modes_keep_their_masks_and_rng_stream(mode):
    g = torch.Generator().manual_seed(2024)
    m = context_mask(mode, 8, 8, g)
    assert m.shape == (8, 1, 8, 1, 1) and m.dtype == torch.float32
    assert given(m) == PINNED[mode]
    assert torch.randint(0, 1000, (4,), generator=g).tolist() == PINNED_NEXT


# ------------------------------------------------------------------ a fake denoiser
class FakeDenoiser(torch.nn.Module):
    """A deterministic stand-in following the denoiser protocol: elementwise in x, its level t, the class
    and the given frames (rolled along time, so a given frame moves the frames beside it); it keeps
    every call's conditioning and batch size."""

    learned_sigma = False

    def __init__(self, labels: bool = True):
        super().__init__()
        self.accepts = frozenset({"context", "context_mask", *(("labels",) if labels else ())})
        self.calls: list = []

    def forward(self, x, t, cond=None, num_images=0):
        self.calls.append((x.shape[0], cond))
        B = x.shape[0]
        level = t.float().reshape(B, 1, -1, 1, 1) / 1000  # (B, 1, 1 or T, 1, 1)
        out = 0.5 * torch.tanh(x) * (1 - 0.5 * level) + 0.05 * torch.sin(3 * x)  # an x0 estimate
        if cond is not None and cond.labels is not None:
            known = (cond.labels >= 0).float()[:, None, None, None, None]
            out = out + known * 0.02 * (cond.labels.float() % 7 - 3)[:, None, None, None, None]
        if cond is not None and cond.context is not None:
            out = out + 0.3 * torch.roll(cond.context, 1, dims=2) + 0.1 * torch.roll(cond.context_mask, -1, dims=2)
        return out


def make_pipe(labels: bool = True) -> tuple[Pipeline, FakeDenoiser]:
    cfg = load_config(overrides=[f"conditions.num_classes={48 if labels else 0}", "conditions.context_frames=true",
                                 "diffusion.prediction=x0", f"data.size={SIZE}", f"data.frames={FRAMES}",
                                 "sample.steps=3"])
    fake = FakeDenoiser(labels)
    return Pipeline(fake, IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu"), fake


def image(seed: int) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


CASES = {  # the calls whose videos are pinned: a class and two frames, guided and not; frames alone
    "labels": dict(labels=[5, 9], frames={0: image(1), -1: image(2)}, steps=3, cfg=3.0, seed=0),
    "labels_cfg1": dict(labels=[5, 9], frames={0: image(1)}, steps=3, cfg=1.0, seed=4),
    "frames_only": dict(frames={0: image(3)}, num_videos=2, steps=3, cfg=2.0, seed=3),
}


def today_video(kind: str, **extra) -> tuple[torch.Tensor, FakeDenoiser]:
    pipe, fake = make_pipe(labels=kind != "frames_only")
    return pipe(**CASES[kind], **extra), fake


# what the pipeline made of CASES before context guidance existed: a few generated elements, the sum, and
# (on the kind of CPU they were made on, as in test_golden.py) a checksum of every byte of the videos
PINNED_VIDEOS = {
    "labels": ({(0, 0, 1, 0, 0): 0.3040030002593994, (0, 2, 2, 3, 5): 0.3823069632053375,
                (1, 1, 3, 7, 7): 0.21308937668800354, (1, 0, 2, 4, 1): -0.18647104501724243},
               126.79099344462156, 2509035442, [4, 4, 4]),
    "labels_cfg1": ({(0, 0, 1, 0, 0): 0.35606294870376587, (0, 2, 2, 3, 5): -0.21167901158332825,
                     (1, 1, 3, 7, 7): -0.16023056209087372, (1, 0, 2, 4, 1): 0.1756758987903595},
                    95.33162187691778, 1848692882, [2, 2, 2]),
    "frames_only": ({(0, 0, 1, 0, 0): -0.957794189453125, (0, 2, 2, 3, 5): 0.19788143038749695,
                     (1, 1, 3, 7, 7): 0.18499408662319183, (1, 0, 2, 4, 1): 0.19556540250778198},
                    70.81531205738429, 889907689, [4, 4, 4]),
}
PINNED_ON = "AVX512"


@pytest.mark.parametrize("extra", [{}, {"context_guidance": 1.0}], ids=["default", "s=1"])
@pytest.mark.parametrize("kind", list(PINNED_VIDEOS))
def test_context_guidance_one_gives_todays_videos(kind, extra):
    import zlib

    elements, total, crc, batches = PINNED_VIDEOS[kind]
    video, fake = today_video(kind, **extra)
    assert video.shape == (2, 3, FRAMES, SIZE, SIZE)
    assert [b for b, _ in fake.calls] == batches  # no extra model evaluation at s = 1
    for index, value in elements.items():
        assert video[index].item() == pytest.approx(value, abs=1e-6), index
    assert video.double().sum().item() == pytest.approx(total, abs=1e-4)
    if torch.backends.cpu.get_cpu_capability() == PINNED_ON:
        assert zlib.crc32(video.contiguous().numpy().tobytes()) == crc  # bit for bit


# ------------------------------------------------------------------ the new modes
def test_prefix2_gives_the_first_one_or_two_frames():
    m = context_mask("prefix2", 64, 8, torch.Generator().manual_seed(0))
    assert m.shape == (64, 1, 8, 1, 1)
    rows = given(m)
    assert {tuple(r) for r in rows} == {(0,), (0, 1)}  # a prefix of 1 or 2 frames, and both occur
    assert 16 <= sum(len(r) == 2 for r in rows) <= 48  # uniformly (binomial(64, 1/2): far inside)
    assert given(context_mask("prefix2", 8, 1, torch.Generator().manual_seed(0))) == [[0]] * 8  # one frame: one


def test_prefix2_keeps_the_shared_draws_and_adds_one():
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    m = context_mask("prefix2", 6, 8, g)
    torch.randint(0, 3, (6,), generator=ref), torch.randint(1, 5, (6,), generator=ref)  # the shared draws
    k = torch.randint(1, 3, (6,), generator=ref)  # its own
    assert [len(r) for r in given(m)] == k.tolist()
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))


@pytest.mark.parametrize("frames,expected", [(9, [0, 4, 8]), (10, [0, 4, 8]), (12, [0, 4, 8]), (13, [0, 4, 8, 12]),
                                             (1, [0]), (4, [0])])
def test_keyframes_are_every_fourth_frame(frames, expected):
    g = torch.Generator().manual_seed(2024)
    m = context_mask("keyframes", 3, frames, g)
    assert m.shape == (3, 1, frames, 1, 1) and m.dtype == torch.float32
    assert given(m) == [expected] * 3
    if frames == 9:  # the same two shared draws as the older modes: the trainer's draws after it are theirs
        g8 = torch.Generator().manual_seed(2024)
        context_mask("keyframes", 8, 8, g8)
        assert torch.randint(0, 1000, (4,), generator=g8).tolist() == PINNED_NEXT


def test_any_never_picks_the_new_modes_and_a_wrong_mode_names_them():
    rows = given(context_mask("any", 200, 9, torch.Generator().manual_seed(1)))
    assert all(r == [0] or r == [0, 8] or r == list(range(len(r))) for r in rows)
    assert not any(r == [0, 4, 8] for r in rows)
    with pytest.raises(ValueError, match="prefix2.*keyframes"):
        context_mask("middle", 1, 4)


# ------------------------------------------------------------------ context guidance
def without_frames(cond):
    """``cond`` with its frames dropped, written out: context and mask zeros, every other field kept."""
    from moviola import Conditioning

    return Conditioning(labels=cond.labels, context=torch.zeros_like(cond.context),
                        context_mask=torch.zeros_like(cond.context_mask))


def one_step(monkeypatch):
    """Replace the pipeline's sampler by one that evaluates its model function once, at x_T and t = 600."""
    from moviola.pipelines import base

    def sample(fn, schedule, shape, x_T, **kwargs):
        return fn(x_T, torch.full((shape[0],), 600))
    monkeypatch.setattr(base, "sample", sample)


@pytest.mark.parametrize("cfg,s", [(3.0, 2.0), (1.0, 2.0), (3.0, 0.5), (3.0, -1.0)])
def test_context_guidance_adds_its_term_to_the_guided_output(monkeypatch, cfg, s):
    one_step(monkeypatch)
    pipe, fake = make_pipe()
    conds = pipe.conditions(2, FRAMES, SIZE, SIZE, labels=[5, 9], frames={0: [image(1)], 3: [image(2), image(5)]})
    x = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = pipe.denoise(conds, x, [torch.Generator()], cfg, "ddim", 1, 0.0, context_guidance=s)
    # one model call: the conditional batch, the unconditional one (when cfg != 1), the one without frames
    assert [b for b, _ in fake.calls] == [6 if cfg != 1 else 4]
    last = fake.calls[0][1].index([4, 5] if cfg != 1 else [2, 3])
    assert last.context_mask.sum() == 0 and last.context.abs().sum() == 0 and last.labels.tolist() == [5, 9]
    # the same by hand: f_cfg + (s - 1)(f(c, S) - f(c, ∅_S)), each branch its own model call
    t = torch.full((2,), 600)
    f_c = fake(x, t, conds.cond)
    f_u = fake(x, t, conds.uncond)  # the null class, the frames kept
    f_n = fake(x, t, without_frames(conds.cond))
    assert not torch.allclose(f_c, f_n)  # the frames matter to the fake model
    expected = f_u + cfg * (f_c - f_u) + (s - 1) * (f_c - f_n)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_with_frames_alone_the_guidances_add(monkeypatch):
    one_step(monkeypatch)
    pipe, fake = make_pipe(labels=False)
    conds = pipe.conditions(2, FRAMES, SIZE, SIZE, frames={0: [image(3)]})
    x = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = pipe.denoise(conds, x, [torch.Generator()], 2.0, "ddim", 1, 0.0, context_guidance=3.0)
    assert [b for b, _ in fake.calls] == [4]  # the unconditional branch is the one without frames: no third
    t = torch.full((2,), 600)
    f_c, f_n = fake(x, t, conds.cond), fake(x, t, without_frames(conds.cond))
    expected = f_n + 2.0 * (f_c - f_n) + (3.0 - 1) * (f_c - f_n)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    fake.calls.clear()  # at cfg = 1 the context guidance alone costs one more evaluation
    pipe.denoise(conds, x, [torch.Generator()], 1.0, "ddim", 1, 0.0, context_guidance=2.0)
    assert [b for b, _ in fake.calls] == [4]


def test_context_guidance_samples_what_its_formula_samples():
    """Through the whole sampler: the pipeline's denoise equals ``sample`` of the formula written out."""
    from moviola.diffusion import sample

    pipe, fake = make_pipe()
    conds = pipe.conditions(2, FRAMES, SIZE, SIZE, labels=[5, 9], frames={0: [image(1)], -1: [image(2)]})
    x_T = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    z = pipe.denoise(conds, x_T, [torch.Generator().manual_seed(0)], 3.0, "ddim", 3, 0.0, context_guidance=2.0)
    assert [b for b, _ in fake.calls] == [6, 6, 6]
    no_frames = without_frames(conds.cond)

    def formula(x, t):
        f_c, f_u, f_n = fake(x, t, conds.cond), fake(x, t, conds.uncond), fake(x, t, no_frames)
        return f_u + 3.0 * (f_c - f_u) + (2.0 - 1) * (f_c - f_n)
    ref = sample(formula, pipe.schedule, x_T.shape, sampler="ddim", steps=3, eta=0.0, prediction="x0",
                 timestep_spacing=pipe.config.diffusion.timestep_spacing, x_T=x_T)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)
    plain = pipe.denoise(conds, x_T, [torch.Generator().manual_seed(0)], 3.0, "ddim", 3, 0.0)
    assert (z - plain).abs().max() > 1e-3


def test_context_guidance_without_frames_is_warned_about_and_changes_nothing():
    pipe, fake = make_pipe()
    with pytest.warns(UserWarning, match=r"context_guidance=2 is ignored.*image= or frames="):
        video = pipe(labels=[5, 9], steps=2, cfg=3.0, seed=0, context_guidance=2.0)
    assert [b for b, _ in fake.calls] == [4, 4]  # no third branch
    assert torch.equal(video, pipe(labels=[5, 9], steps=2, cfg=3.0, seed=0))


@pytest.mark.parametrize("value,error", [(float("nan"), ValueError), (float("inf"), ValueError), ("2", TypeError),
                                         (True, TypeError)])
def test_a_bad_context_guidance_is_refused_before_sampling(value, error):
    pipe, fake = make_pipe()
    with pytest.raises(error, match="context_guidance"):
        pipe(labels=[5], frames={0: image(1)}, steps=2, context_guidance=value)
    with pytest.raises(error, match="context_guidance"):
        conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[5], frames={0: [image(1)]})
        pipe.denoise(conds, torch.zeros(1, 3, FRAMES, SIZE, SIZE), [torch.Generator()], 2.0, "ddim", 2, 0.0,
                     context_guidance=value)
    assert fake.calls == []


def test_the_helper_keeps_the_variance_and_feeds_self_conditioning_to_every_branch():
    """``classifier_free_guidance``'s second term: mean channels only; the self-conditioning estimate in all three."""
    from types import SimpleNamespace

    from moviola import Conditioning
    from moviola.diffusion import classifier_free_guidance, guided_model_fn

    seen = []

    def model(x, t, cond):  # 2C channels: a mean and a variance that depend on the condition
        seen.append(cond)
        shift = cond.labels.float()[:, None, None, None, None] + 10 * cond.context_mask
        return torch.cat([x + shift, 0 * x + shift], dim=1)

    x, m = torch.randn(2, 3, 4, 2, 2), torch.ones(2, 1, 4, 1, 1)
    cond = Conditioning(labels=torch.tensor([2, 3]), context=x * m, context_mask=m)
    uncond, no_frames = cond.null(["labels"]), cond.null(["context"])
    out = classifier_free_guidance(model, x, 5, cond, uncond, 4.0, True, no_frames, 1.5)
    mean_c, mean_u, mean_n = (model(x, torch.tensor([5, 5]), c)[:, :3] for c in (cond, uncond, no_frames))
    torch.testing.assert_close(out[:, :3], mean_u + 4.0 * (mean_c - mean_u) + 0.5 * (mean_c - mean_n))
    torch.testing.assert_close(out[:, 3:], model(x, torch.tensor([5, 5]), cond)[:, 3:])  # the conditional variance
    seen.clear()
    fn = guided_model_fn(model, cond, uncond, 4.0, True, self_condition=True, second_uncond=no_frames, second_scale=2.0)
    prev = torch.randn_like(x)
    fn(x, 5, SimpleNamespace(pred_x0=prev))
    assert len(seen) == 1 and seen[0].self_cond.shape[0] == 6
    assert all(torch.equal(seen[0].self_cond[i * 2:(i + 1) * 2], prev) for i in range(3))


def test_the_cli_passes_context_guidance_through():
    from moviola.cli import build_parser
    from moviola.cli import sample as sample_cli

    args = build_parser().parse_args(["sample", "ckpt", "--image", "a.png", "--context-guidance", "2.5",
                                      "--out", "v.mp4", "--quiet"])
    assert args.context_guidance == 2.5
    assert build_parser().parse_args(["sample", "ckpt", "--out", "v.mp4"]).context_guidance == 1.0
    calls = []

    def pipe(**kwargs):
        calls.append(kwargs)
        return torch.zeros(kwargs["num_videos"], 3, 1, 2, 2)
    sample_cli.generate(pipe, args, None, None)
    assert [c["context_guidance"] for c in calls] == [2.5]
    bad = build_parser().parse_args(["sample", "ckpt", "--context-guidance", "nan", "--out", "v.mp4"])
    with pytest.raises(ValueError, match="--context-guidance must be a finite number"):
        sample_cli._check_sample_args(bad)
