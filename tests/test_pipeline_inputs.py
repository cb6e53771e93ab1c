"""Pipeline inputs: every number is checked before any compute, and requests the model cannot serve well warn.

Issue 14, items 4, 5 and 11: ``pipe(cfg=nan)`` returned an all-NaN video; more frames or another
size than the model was trained on, a prompt with no word of a Moving Shapes model's vocabulary,
and ``eta`` with a sampler that does not read it all ran without a word.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import moviola
from moviola.autoencoders import IdentityAutoencoder
from moviola.config import load_config
from moviola.diffusion import build_schedule
from moviola.models.registry import build_model
from moviola.pipelines import Pipeline

FRAMES, SIZE = 6, 16
T2V = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-latte-t2v"


class Counting(torch.nn.Module):
    """A denoiser that counts its calls (any compute shows up here)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, 0
        self.accepts, self.learned_sigma = model.accepts, model.learned_sigma

    def forward(self, x, t, cond=None):
        self.calls += 1
        return self.inner(x, t, cond)


class CountingAutoencoder(IdentityAutoencoder):
    def __init__(self):
        super().__init__()
        self.encodes = 0

    def encode(self, x):
        self.encodes += 1
        return super().encode(x)


def tiny_pipe(labels: bool = True, context: bool = True) -> Pipeline:
    cfg = load_config(overrides=["model.patch_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
                                 f"conditions.num_classes={48 if labels else 0}",
                                 f"conditions.context_frames={'true' if context else 'false'}",
                                 f"data.size={SIZE}", f"data.frames={FRAMES}", "sample.steps=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Pipeline(Counting(model), CountingAutoencoder(), build_schedule(cfg.diffusion), cfg, device="cpu")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


@pytest.fixture(scope="module")
def t2v():
    return moviola.load_pipeline(T2V, device="cpu")


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def one_warning(match: str, fn, *args, **kwargs):
    with pytest.warns(UserWarning) as record:
        out = fn(*args, **kwargs)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0], messages[0]
    assert re.search(match, messages[0]), messages[0]
    return out


# ------------------------------------------------------------------------------------- item 4: numbers


BAD = [
    (dict(cfg=float("nan")), ValueError, r"cfg must be a finite number"),
    (dict(cfg=float("inf")), ValueError, r"cfg must be a finite number"),
    (dict(cfg="4"), TypeError, r"cfg must be a number"),
    (dict(eta=float("nan")), ValueError, r"eta must be a finite number"),
    (dict(eta=-0.5), ValueError, r"eta must be 0 or more"),
    (dict(steps=0), ValueError, r"steps must be positive"),
    (dict(steps=1001), ValueError, r"steps must be .*1 to 1000"),
    (dict(steps=2.5), TypeError, r"steps must be an int"),
    (dict(num_frames=0), ValueError, r"num_frames must be positive"),
    (dict(num_frames=2.5), TypeError, r"num_frames must be an int"),
    (dict(height=-16), ValueError, r"height must be positive"),
    (dict(width=16.0), TypeError, r"width must be an int"),
    (dict(num_videos=0), ValueError, r"num_videos must be positive"),
    (dict(batch_size=0), ValueError, r"batch_size must be positive"),
    (dict(batch_size=1.5), TypeError, r"batch_size must be an int"),
    (dict(seed=1.5), TypeError, r"seed must be an int"),
    (dict(seed=True), TypeError, r"seed must be an int"),
    (dict(seed=2 ** 64), ValueError, r"seed must be"),
    (dict(labels=[1.7]), TypeError, r"labels must be ints"),
    (dict(labels=["3"]), TypeError, r"labels must be ints"),
    (dict(labels=[True]), TypeError, r"labels must be ints"),
    (dict(sampler="dpm"), ValueError, r"unknown sampler 'dpm'.*ddim"),
    (dict(sampler=3), TypeError, r"sampler must be"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[f"{k}={v!r}" for (k, v), in (b[0].items() for b in BAD)])
def test_a_bad_number_is_refused_before_any_compute(kwargs, error, match):
    pipe = tiny_pipe()
    kwargs = {"labels": [1], "steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        pipe(frames={0: torch.zeros(3, SIZE, SIZE)}, **kwargs)
    assert pipe.model.calls == 0 and pipe.autoencoder.encodes == 0


def test_numpy_numbers_and_label_arrays_are_accepted(pipe):
    base = no_warnings(pipe, labels=[3, 5], steps=2, seed=4, cfg=2.0)
    same = no_warnings(pipe, labels=np.array([3, 5]), steps=np.int64(2), seed=np.int64(4), cfg=np.float32(2.0),
                       num_frames=np.int32(FRAMES), batch_size=np.int64(1))
    assert torch.equal(base, same)
    assert torch.equal(base, no_warnings(pipe, labels=torch.tensor([3, 5]), steps=2, seed=4, cfg=2))
    assert torch.equal(base[:1], no_warnings(pipe, labels=3, steps=2, seed=4, cfg=2.0))  # one label: one video
    assert torch.equal(base[:1], no_warnings(pipe, labels=np.array(3), steps=2, seed=4, cfg=2.0))
    first = torch.zeros(3, SIZE, SIZE)
    assert torch.equal(no_warnings(pipe, labels=[3], frames={np.int64(0): first}, steps=1),
                       no_warnings(pipe, labels=[3], frames={0: first}, steps=1))


def test_negative_guidance_is_allowed(pipe):
    video = no_warnings(pipe, labels=[3], steps=2, cfg=-1.5)
    assert torch.isfinite(video).all()


def test_the_steps_are_checked_too():
    pipe = tiny_pipe()
    with pytest.raises(ValueError, match="n must be positive"):
        pipe.conditions(0, FRAMES, SIZE, SIZE, labels=[])
    with pytest.raises(TypeError, match="height must be an int"):
        pipe.conditions(1, FRAMES, 16.0, SIZE, labels=[1])
    conds = pipe.conditions(1, FRAMES, SIZE, SIZE, labels=[1])
    x_T = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    for kwargs, match in ((dict(scale=float("nan")), "cfg must be a finite number"), (dict(eta=-1.0), "eta must be 0"),
                          (dict(sampler="euler"), "unknown sampler"), (dict(steps=0), "steps must be positive")):
        args = {"scale": 2.0, "sampler": "ddim", "steps": 2, "eta": 0.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            pipe.denoise(conds, x_T, [torch.Generator()], **args)
    assert pipe.model.calls == 0


# ------------------------------------------------------------------------------------- item 5: beyond training


def test_more_frames_than_trained_warn_with_what_the_model_was_trained_on(pipe):
    with pytest.warns(UserWarning) as record:
        pipe(labels=[1], steps=1, num_frames=FRAMES + 1)
    assert record[0].filename == __file__  # attributed to the caller, not to moviola or torch
    video = one_warning(rf"trained on {FRAMES} frames of {SIZE}×{SIZE}; asked for {FRAMES + 2} frames.*"
                        r"for a longer video pass long='autoregressive' or long='fifo'",
                        pipe, labels=[1], steps=1, num_frames=FRAMES + 2)
    assert video.shape[2] == FRAMES + 2


@pytest.mark.parametrize("height,width", [(2 * SIZE, 2 * SIZE), (SIZE // 2, SIZE // 2), (SIZE, 2 * SIZE)])
def test_another_size_warns(pipe, height, width):
    one_warning(rf"trained on {FRAMES} frames of {SIZE}×{SIZE}; asked for {FRAMES} frames of {height}×{width}",
                pipe, labels=[1], steps=1, height=height, width=width)


def test_fewer_frames_and_the_training_shape_do_not_warn(pipe):
    no_warnings(pipe, labels=[1], steps=1, num_frames=FRAMES - 2)
    no_warnings(pipe, labels=[1, 2], steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, cfg=3.0, sampler="ddim",
                eta=0.5, seed=1, batch_size=1)


# ------------------------------------------------------------------------------------- item 11: ignored options


@pytest.mark.parametrize("sampler", ["dpm++2m", "ddpm"])
def test_eta_with_a_sampler_that_does_not_read_it_warns(pipe, sampler):
    one_warning(rf"eta=0.5 is ignored by the {re.escape(sampler)} sampler.*ddim", pipe, labels=[1], steps=2,
                sampler=sampler, eta=0.5)
    no_warnings(pipe, labels=[1], steps=2, sampler=sampler, eta=0.0)
    no_warnings(pipe, labels=[1], steps=2, sampler=sampler)


def test_guidance_on_a_model_with_nothing_to_guide_on_warns():
    pipe = tiny_pipe(labels=False, context=False)
    one_warning(r"cfg=4.0 is ignored: .*unconditional", pipe, num_videos=1, steps=1, cfg=4.0)
    no_warnings(pipe, num_videos=1, steps=1)


def test_a_prompt_with_no_word_a_moving_shapes_model_knows_warns_once(t2v):
    with pytest.warns(UserWarning) as record:
        t2v.conditions(2, 17, 32, 32, prompt=["a cat jumping", "sunset over the sea"])
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert "'a cat jumping'" in messages[0] and "'sunset over the sea'" in messages[0]
    assert "a {red|green|blue|yellow} {circle|square|triangle} moving {left|right|up|down}" in messages[0]
    assert "\n" not in messages[0]
    no_warnings(t2v.conditions, 3, 17, 32, 32, prompt=["", "a red circle moving right", "Blue, please"])


def test_a_known_prompt_samples_without_a_warning(t2v):
    video = no_warnings(t2v, prompt=["a red circle moving right", ""], steps=1)
    assert video.shape == (2, 3, 17, 32, 32)


def test_a_negative_prompt_without_guidance_warns(t2v):
    one_warning(r"negative prompt is ignored at cfg=1", t2v, prompt=["a red circle moving up"],
                negative_prompt="a blue square", cfg=1.0, steps=1)
