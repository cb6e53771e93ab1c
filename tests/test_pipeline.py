"""The generation pipeline: per-video seeds, argument checks, and sampling-then-training safety."""
from __future__ import annotations

import pytest
import torch

import moviola
from moviola.config import ConditionsConfig, ConfigError, LatteConfig, load_config
from moviola.models.latte import Latte
from moviola.training.trainer import Trainer

TINY = ["name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
        "model.num_heads=2", "conditions.num_classes=48", "data.size=32", "data.frames=4", "data.count=8",
        "train.batch_size=2", "train.lr=1e-3", "train.device=cpu", "train.precision=fp32", "train.steps=4",
        "train.checkpoint_every=4", "sample.steps=4"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    run = tmp_path_factory.mktemp("p") / "run"
    Trainer(load_config(overrides=TINY), run, quiet=True).train()
    return moviola.load_pipeline(run, device="cpu")


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_a_video_depends_on_its_seed_not_on_its_batch(pipe, sampler, eta):
    """Stochastic samplers draw each video's noise from its own generator (seed + index)."""
    together = pipe(labels=[3, 7, 11], steps=4, sampler=sampler, eta=eta, seed=5, cfg=2.0)
    alone = pipe(labels=[11], steps=4, sampler=sampler, eta=eta, seed=7, cfg=2.0)  # video 2 had seed 5 + 2
    split = pipe(labels=[3, 7, 11], steps=4, sampler=sampler, eta=eta, seed=5, cfg=2.0, batch_size=2)
    assert torch.equal(together[2], alone[0])
    assert torch.equal(together, split)
    assert not torch.equal(together[0], pipe(labels=[3], steps=4, sampler=sampler, eta=eta, seed=6, cfg=2.0)[0])


def test_bad_arguments_are_value_errors(pipe):
    with pytest.raises(ValueError, match="steps must be positive"):
        pipe(labels=[1], steps=0)
    with pytest.raises(ValueError, match="out of range"):
        pipe(labels=[48])
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        pipe(num_videos=1)


def test_a_text_model_without_an_encoder_is_refused_not_sampled_unconditionally(pipe):
    text_model = Latte(LatteConfig(patch_size=8, hidden_size=32, depth=2, num_heads=2),
                       ConditionsConfig(text_channels=16), in_channels=3)
    p = moviola.pipelines.Pipeline(text_model, pipe.autoencoder, pipe.schedule, pipe.config, device="cpu")
    with pytest.raises(ValueError, match="text-to-video model"):
        p(num_videos=1, steps=2)


def test_rope_tables_made_under_inference_mode_still_train():
    model = Latte(LatteConfig(patch_size=8, hidden_size=32, depth=2, num_heads=2, temporal_pos="rope"),
                  ConditionsConfig(), in_channels=3)
    x, t = torch.randn(1, 3, 5, 16, 16), torch.tensor([3])
    with torch.inference_mode():
        model(x, t)
    model(x, t).sum().backward()  # the cached tables must be ordinary tensors
    assert model.x_embedder.proj.weight.grad is not None


def test_fp16_training_is_refused_until_loss_scaling_exists(tmp_path):
    with pytest.raises(ConfigError, match="fp16 is not supported for training"):
        Trainer(load_config(overrides=[*TINY, "train.precision=fp16"]), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
