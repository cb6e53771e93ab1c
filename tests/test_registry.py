"""The family registry: each family's config class and model class are registered together, and a tiny
config of each builds, runs forward and backward, follows the denoiser protocol and round-trips through
a checkpoint directory."""
from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import torch

from moviola import Conditioning
from moviola.config import MODEL_CONFIGS, ConditionsConfig, load_config
from moviola.io.checkpoint import save_checkpoint
from moviola.models.base import STAGES, Denoiser
from moviola.models.loading import load_model
from moviola.models.registry import FAMILIES, build_model

# the smallest config of each family that exercises its conditions (new families add a line here)
TINY = {
    "latte": ["model.patch_size=4", "model.hidden_size=16", "model.depth=2", "model.num_heads=2"],
    "walt": ["model.patch_size=2", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
             "model.pos_grid=[4,8,8]"],
    "video_ldm": ["model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
                  "model.norm_num_groups=8", "model.temporal_head_channels=8"],
    "videocrafter": ["model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
                     "model.norm_num_groups=8", "model.relative_position=true"],
}
B, C, T, S = 2, 3, 4, 8


def test_every_family_has_a_config_class_and_a_model_class():
    assert set(FAMILIES) == set(MODEL_CONFIGS) == set(TINY)
    for family, (config_class, model_class) in FAMILIES.items():
        assert MODEL_CONFIGS[family] is config_class
        assert config_class().family == family == model_class.family
        assert isinstance(inspect.getattr_static(model_class, "from_config"), classmethod)


def tiny_run(family: str, *extra: str):
    return load_config(overrides=[f"model.family={family}", *TINY[family], f"data.size={S}", f"data.frames={T}",
                                  "conditions.num_classes=48", "conditions.context_frames=true", *extra])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tiny_model_of_each_family_runs_forward_and_backward(family):
    cfg = tiny_run(family)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, C)
    assert isinstance(model, Denoiser)
    assert {"labels", "context", "context_mask"} <= model.accepts
    x = torch.randn(B, C, T, S, S)
    m = torch.zeros(B, 1, T, 1, 1)
    m[:, :, 0] = 1
    cond = Conditioning(labels=torch.tensor([3, -1]), context=x * m, context_mask=m)
    out = model(x, torch.tensor([5, 900]), cond)
    assert out.shape == (B, C * (2 if model.learned_sigma else 1), T, S, S)
    out_frame = model(x, torch.tensor([[5] * T, [900] * T]), cond)  # t per frame, the same values
    torch.testing.assert_close(out_frame, out)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameter_groups("all") if p.requires_grad)
    with pytest.raises(ValueError, match="fps"):
        model(x, torch.tensor([5, 900]), Conditioning(labels=cond.labels, fps=torch.tensor([8, 8])))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parameter_groups_split_the_model(family):
    cfg = tiny_run(family)
    model = build_model(cfg.model, cfg.conditions, C)
    every = {id(p) for p in model.parameters()}
    groups = {stage: {id(p) for p in model.parameter_groups(stage)} for stage in STAGES}
    assert groups["all"] == every
    assert groups["temporal"] and groups["spatial"]
    assert groups["temporal"] | groups["spatial"] == every and not groups["temporal"] & groups["spatial"]
    with pytest.raises(ValueError, match="stage"):
        model.parameter_groups("decoder")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tiny_model_round_trips_through_a_checkpoint(family, tmp_path):
    from moviola.config import to_dict

    cfg = tiny_run(family)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, C)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "checkpoints", 1, to_dict(cfg), model, model)
    loaded = load_model(path)
    x = torch.randn(B, C, T, S, S)
    cond = Conditioning(labels=torch.tensor([1, 2]))
    model.eval()
    assert torch.equal(loaded(x, torch.tensor([10, 20]), cond), model(x, torch.tensor([10, 20]), cond))
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(cfg.model)


def test_the_registry_refuses_a_config_of_another_class():
    @dataclasses.dataclass(frozen=True)
    class Other:
        family: str = "latte"

    with pytest.raises(ValueError, match="known families"):
        build_model(Other(), ConditionsConfig(), C)


def test_a_stage_freezes_the_rest_of_the_model_in_training(tmp_path):
    from moviola.training.trainer import Trainer

    cfg = load_config(overrides=["model.patch_size=8", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
                                 "conditions.num_classes=48", "data.size=32", "data.frames=4", "data.count=4",
                                 "train.batch_size=2", "train.steps=2", "train.checkpoint_every=2",
                                 "train.device=cpu", "train.stage=temporal", "train.lr=1e-2"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    with torch.no_grad():  # a live (frozen) output layer, else no gradient reaches the blocks at all (adaLN-Zero)
        trainer.model.final_layer.linear.weight.normal_(0, 0.1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temporal_blocks.") for k in changed), sorted(changed)[:5]


def test_stage_names_are_spelled_once():
    """config/ sits below models/, so TrainConfig's Literal cannot import STAGES: it must list the same names."""
    from moviola.config import TrainConfig

    assert typing.get_args(typing.get_type_hints(TrainConfig)["stage"]) == STAGES
