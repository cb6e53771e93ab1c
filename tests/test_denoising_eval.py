"""eval/denoising.py: the held-out denoising loss equals the objective computed by hand, pairs across
checkpoints, and its paired difference matches a direct computation; studies report it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from moviola.config import load_config, to_dict
from moviola.data import build_dataset
from moviola.eval.denoising import paired_difference, validation_loss
from moviola.io.checkpoint import save_checkpoint
from moviola.models.registry import build_model

torch.set_num_threads(1)


def tiny_checkpoint(tmp_path, seed=0, name="a"):
    cfg = load_config(overrides=["model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
                                 "model.num_heads=2", "conditions.num_classes=48", "data.size=32", "data.frames=4",
                                 "train.device=cpu"])
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.conditions, 3)
    with torch.no_grad():  # off the zero initialization, so the output depends on the input
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(tmp_path / name / "checkpoints", 1, to_dict(cfg), model, model), cfg, model


def test_the_loss_is_the_objective_computed_by_hand(tmp_path):
    path, cfg, model = tiny_checkpoint(tmp_path)
    out = validation_loss(path, clips=5, batch_size=2, seed=3, device="cpu")
    assert out["clips"] == 5 and len(out["per_clip"]) == 5
    from moviola.diffusion import build_schedule

    abar = torch.as_tensor(build_schedule(cfg.diffusion).alphas_cumprod, dtype=torch.float64)
    data = build_dataset(cfg.data, split="test")
    model.eval()
    want = []
    for start in (0, 2, 4):  # the documented draws: one generator per batch of 2
        idx = list(range(start, min(5, start + 2)))
        x0 = torch.stack([data[i]["video"] for i in idx])  # the identity autoencoder: pixels are the latents
        g = torch.Generator().manual_seed(3 * 1_000_003 + start)
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].float().view(-1, 1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        labels = torch.tensor([data[i]["label"] for i in idx])
        from moviola import Conditioning

        with torch.no_grad():
            pred = model(x_t, t, Conditioning(labels=labels))
        want += ((pred - eps) ** 2).mean(dim=(1, 2, 3, 4)).tolist()
    assert np.allclose(out["per_clip"], want, rtol=1e-4, atol=1e-6)
    assert out["val_loss"] == pytest.approx(np.mean(want), rel=1e-4)


def test_two_checkpoints_see_the_same_draws_and_pair_up(tmp_path):
    a, *_ = tiny_checkpoint(tmp_path, 0, "a")
    b, *_ = tiny_checkpoint(tmp_path, 1, "b")
    la, lb = (validation_loss(p, clips=6, device="cpu") for p in (a, b))
    assert validation_loss(a, clips=6, device="cpu")["per_clip"] == la["per_clip"]
    assert la["per_clip"] != lb["per_clip"]
    mean, se = paired_difference(la["per_clip"], lb["per_clip"])
    d = np.array(lb["per_clip"]) - np.array(la["per_clip"])
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    with pytest.raises(ValueError, match="same number"):
        paired_difference([1.0, 2.0], [1.0])


def test_the_direction_gap_conditions_on_the_opposite_direction_and_pairs(tmp_path, monkeypatch):
    """The counterfactual keeps the clips and draws and flips only the direction of the caption or class."""
    from moviola.data.shapes import label_to_attributes
    from moviola.eval import denoising

    path, *_ = tiny_checkpoint(tmp_path)
    seen = []
    real = denoising._conditions
    monkeypatch.setattr(denoising, "_conditions", lambda pipe, batch: seen.append(batch["label"].clone()) or real(pipe, batch))
    out = denoising.direction_gap(path, clips=6, batch_size=6, device="cpu")
    own, other = seen
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for a, b in zip(own.tolist(), other.tolist()):
        ca, sa, da = label_to_attributes(a)
        assert label_to_attributes(b) == (ca, sa, flip[da])
    mine = validation_loss(path, clips=6, batch_size=6, device="cpu")
    theirs = validation_loss(path, clips=6, batch_size=6, device="cpu", opposite_direction=True)
    assert out["gap"] == pytest.approx(np.mean(np.array(theirs["per_clip"]) - np.array(mine["per_clip"])))
    assert out["gap"] != 0.0
