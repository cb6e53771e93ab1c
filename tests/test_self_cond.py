"""Self-conditioning (Chen et al. 2022; W.A.L.T): training on the model's own x0 estimate, and sampling
that feeds each step the previous estimate."""
from __future__ import annotations

import pytest
import torch

from moviola import Conditioning
from moviola.config import load_config
from moviola.diffusion import NoiseSchedule, make_betas, training_losses


class Spy(torch.nn.Module):
    """A linear per-channel denoiser that records the self_cond it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.seen: list = []

    def forward(self, x, t, cond=None):
        est = cond.self_cond
        self.seen.append(est.clone())
        return self.w * x + 0.3 * est


def test_the_second_pass_sees_the_first_passes_estimate_where_chosen_and_zeros_elsewhere():
    schedule = NoiseSchedule(make_betas("linear", 1000))
    x0, noise = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    t = torch.tensor([10, 500, 900])
    model = Spy()
    use = torch.tensor([True, False, True])
    terms = training_losses(model, schedule, x0, t, Conditioning(), prediction="v", noise=noise, self_cond=use)
    first, second = model.seen
    assert torch.equal(first, torch.zeros_like(x0))
    x_t = schedule.q_sample(x0, t, noise)
    est = schedule.to_x0(0.7 * x_t, "v", x_t, t)  # what the first pass predicts, as x0
    torch.testing.assert_close(second[use], est[use])
    assert torch.equal(second[~use], torch.zeros_like(second[~use]))
    terms["loss"].mean().backward()  # the estimate carries no gradient: only the second pass trains
    assert model.w.grad is not None and not second.requires_grad


def test_without_self_conditioning_the_model_is_called_once():
    schedule = NoiseSchedule(make_betas("linear", 1000))
    calls = []
    training_losses(lambda x, t, c: calls.append(c) or torch.zeros_like(x), schedule, torch.randn(2, 2, 3, 4, 4),
                    torch.tensor([1, 2]))
    assert len(calls) == 1


def test_a_self_conditioned_walt_trains_and_samples_through_the_run_loop(tmp_path):
    import moviola
    from moviola.training.trainer import Trainer

    cfg = load_config(overrides=[
        "model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2", "model.pos_grid=[4,32,32]",
        "conditions.num_classes=48", "conditions.self_cond=0.9", "data.size=32", "data.frames=4", "data.count=4",
        "train.batch_size=2", "train.steps=3", "train.checkpoint_every=3", "train.device=cpu", "train.precision=fp32",
        "train.lr=1e-3", "diffusion.prediction=v", "autoencoder.kind=identity", "model.patch_size=8"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    last = trainer.train()
    assert torch.isfinite(torch.tensor(last["loss"]))
    pipe = moviola.load_pipeline(tmp_path / "run", device="cpu")
    assert "self_cond" in pipe.accepts
    seen = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, t, cond=None, **kw: seen.append(cond.self_cond) or inner(x, t, cond, **kw)
    pipe(labels=[3], steps=3, seed=0, cfg=2.0)
    assert seen[0].abs().sum() == 0 and seen[1].abs().sum() > 0  # zeros first, then the previous estimate


def test_a_condition_training_cannot_build_is_refused_before_compute(tmp_path, monkeypatch):
    """Training builds every condition a config can ask for now (VideoCrafter's image tokens were the last:
    tests/test_videocrafter_clip.py). The refusal stays for the next one, checked here by taking labels off the
    built list."""
    from moviola.config import ConditionsConfig, ConfigError
    from moviola.training import trainer as trainer_module
    from moviola.training.trainer import BUILT_CONDITIONS, Trainer

    every = ConditionsConfig(num_classes=2, text_channels=8, context_frames=True, image=True, fps=True, low_res=True,
                             noise_level=True, self_cond=0.5).wanted()
    assert set(every) <= set(BUILT_CONDITIONS)
    monkeypatch.setattr(trainer_module, "BUILT_CONDITIONS", tuple(c for c in BUILT_CONDITIONS if c != "labels"))
    cfg = load_config(overrides=[
        "model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2", "model.pos_grid=[4,32,32]",
        "conditions.num_classes=48", "data.size=32", "data.frames=4", "data.count=4", "train.device=cpu",
        "autoencoder.kind=identity", "model.patch_size=8"])
    with pytest.raises(ConfigError, match=r"cannot build the condition\(s\) \['labels'\]"):
        Trainer(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
