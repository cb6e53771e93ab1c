"""The pipeline's three steps (conditions → denoise → decode) and given frames at any index."""
from __future__ import annotations

import pytest
import torch

from moviola import Conditioning
from moviola.autoencoders import IdentityAutoencoder
from moviola.config import load_config
from moviola.diffusion import build_schedule
from moviola.models.registry import build_model
from moviola.pipelines import Pipeline

FRAMES, SIZE = 6, 16


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the conditionings it is called with."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls, self.timesteps = model, [], []
        self.accepts, self.learned_sigma = model.accepts, model.learned_sigma

    def forward(self, x, t, cond=None):
        self.calls.append(cond)
        self.timesteps.append(t)
        return self.inner(x, t, cond)


def make_pipe(context: bool = True, labels: bool = True) -> tuple[Pipeline, Recorder]:
    cfg = load_config(overrides=["model.patch_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
                                 f"conditions.num_classes={48 if labels else 0}",
                                 f"conditions.context_frames={'true' if context else 'false'}",
                                 f"data.size={SIZE}", f"data.frames={FRAMES}", "sample.steps=3"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, 3)
    with torch.no_grad():  # live output layers: a zero model would make every check trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rec = Recorder(model)
    return Pipeline(rec, IdentityAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu"), rec


def image(seed: int) -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_given_frames_at_any_index_are_the_context_and_come_back_exactly():
    pipe, rec = make_pipe()
    first, middle, last = image(1), image(2), image(3)
    video = pipe(labels=[5, 9], frames={0: first, 3: middle, -1: [last, last]}, steps=3, seed=0, cfg=1.0)
    assert video.shape == (2, 3, FRAMES, SIZE, SIZE)
    for index, img in ((0, first), (3, middle), (FRAMES - 1, last)):
        assert torch.equal(video[:, :, index], img.expand(2, -1, -1, -1))  # identity autoencoder: exact
    mask = rec.calls[0].context_mask[:, 0, :, 0, 0]  # (B, T)
    assert mask.tolist() == [[1, 0, 0, 1, 0, 1]] * 2
    assert torch.equal(rec.calls[0].context[0, :, 3], middle)
    assert not torch.equal(video[:, :, 1], video[:, :, 2])  # the other frames are generated


def test_the_three_steps_compose_to_the_call():
    pipe, _ = make_pipe()
    whole = pipe(labels=[5], frames={2: image(4)}, steps=3, seed=7, cfg=3.0)
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[5], frames={2: [image(4)]})
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn((1, 3, FRAMES, SIZE, SIZE), generator=g)
    z = pipe.denoise(conds, x_T, [torch.Generator().manual_seed(7)], 3.0, "ddim", 3, 0.0)
    assert torch.equal(pipe.decode(z, conds), whole)
    # with a class to guide on, the unconditional branch keeps the frame; labels are nulled
    assert torch.equal(conds.uncond.context_mask, conds.cond.context_mask)
    assert conds.uncond.labels.tolist() == [-1]


@pytest.mark.parametrize("frames,match", [
    ({6: image(0)}, "outside the 6 frames"),
    ({0: image(0), -6: image(1)}, "given twice"),
    ({2: [image(0)] * 3}, "3 images for 2 videos"),
    ({"2": image(0)}, "frame indices"),
])
def test_bad_given_frames_are_refused_before_sampling(frames, match):
    pipe, rec = make_pipe()
    with pytest.raises(ValueError, match=match):
        pipe(labels=[1, 2], frames=frames, steps=2)
    assert rec.calls == []


def test_a_model_without_context_frames_refuses_given_frames():
    pipe, rec = make_pipe(context=False)
    with pytest.raises(ValueError, match="does not take a first frame"):
        pipe(labels=[1], frames={2: image(0)}, steps=2)
    assert rec.calls == []


def test_a_causal_vae_takes_only_frame_zero_alone():
    pipe, _ = make_pipe()
    pipe.autoencoder.temporal_factor = 4  # what the check reads; nothing is encoded before it
    with pytest.raises(ValueError, match="only frame 0 can be given"):
        pipe(labels=[1], frames={4: image(0)}, steps=2)


def test_only_given_frames_as_the_condition_are_nulled_for_guidance():
    pipe, _ = make_pipe(labels=False)
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, frames={0: [image(0)]})
    assert conds.guided and conds.uncond.context_mask.sum() == 0 and conds.cond.context_mask.sum() == 1
    assert isinstance(conds.cond, Conditioning)


def test_denoise_walks_a_per_frame_plan_with_given_frames_clean():
    """A plan with the given frame clean (-1) keeps that frame's latent exactly and steps the others."""
    from moviola.diffusion.plans import uniform_plan, with_clean_frames
    from moviola.diffusion.schedule import spaced_timesteps

    pipe, rec = make_pipe()
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[5], frames={2: [image(4)]})
    given = conds.cond.context_mask[0, 0, :, 0, 0].bool()  # (T,)
    plan = with_clean_frames(uniform_plan(spaced_timesteps(3, 1000), FRAMES), given)
    x_T = conds.cond.context.clone() + torch.randn(1, 3, FRAMES, SIZE, SIZE) * (~given).float()[None, None, :, None, None]
    z = pipe.denoise(conds, x_T, [torch.Generator().manual_seed(0)], 2.0, "ddim", 3, 0.0, plan=plan)
    assert torch.equal(z[:, :, 2], conds.cond.context[:, :, 2])  # clean throughout
    assert not torch.equal(z[:, :, 0], x_T[:, :, 0])
    assert len(rec.timesteps) == 3  # one (guided, doubled-batch) call per step
    for t in rec.timesteps[:2]:  # per-frame levels: the given frame is shown t = 0, the others their level
        assert t.shape == (2, FRAMES) and (t[:, 2] == 0).all() and (t[:, 0] > 0).all()
    assert rec.timesteps[2].tolist() == [0, 0]  # leading spacing's last level is 0 for every frame: one t per video


def test_conditions_takes_the_forms_the_call_takes_and_checks_lengths():
    pipe, _ = make_pipe()
    one = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=5, frames={2: image(4)})  # a bare int and a bare image
    listed = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[5], frames={2: [image(4)]})
    assert torch.equal(one.cond.context, listed.cond.context) and one.cond.labels.tolist() == [5]
    with pytest.raises(ValueError, match="2 labels for 3 videos"):
        pipe.conditions(3, FRAMES, SIZE, SIZE, labels=[1, 2])


def test_denoise_of_an_unguided_batch_is_one_plain_pass():
    pipe, rec = make_pipe(context=False, labels=False)
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE)
    assert not conds.guided
    pipe.denoise(conds, torch.randn(1, 3, FRAMES, SIZE, SIZE), [torch.Generator().manual_seed(0)], 4.0, "ddim", 2, 0.0)
    assert [t.shape[0] for t in rec.timesteps] == [1, 1]  # no doubled (conditional + unconditional) batch
