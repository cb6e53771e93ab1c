"""End to end: a tiny pixel-space Latte trains on Moving Shapes, writes a crash-safe run directory,
resumes bit-identically, and its checkpoint samples videos through the public API."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch
from safetensors.torch import load_file

import moviola
from moviola.config import ConfigError, load_config
from moviola.training import trainer as trainer_mod
from moviola.io.checkpoint import list_checkpoints, resolve_checkpoint
from moviola.training.trainer import Trainer, batch_indices

TINY = [
    "name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
    "model.num_heads=2", "data.size=32", "data.frames=4", "data.count=8", "train.batch_size=2",
    "train.lr=1e-3", "train.device=cpu", "train.precision=fp32", "train.log_every=1",
    "train.checkpoint_every=1000", "sample.steps=4",
]


def tiny_config(*extra: str):
    return load_config(overrides=[*TINY, *extra])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(path / f"{name}.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """12 steps of a class-conditional model, a checkpoint every 3 steps, the newest 2 kept."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    cfg = tiny_config("train.steps=12", "train.checkpoint_every=3", "train.keep_last=2", "train.log_every=4",
                      "conditions.num_classes=48")
    Trainer(cfg, run_dir, quiet=True).train()
    return run_dir


# ------------------------------------------------------------------ learning

def test_loss_decreases(tmp_path):
    cfg = tiny_config("train.steps=80", "train.log_every=4", "train.lr=2e-3")
    Trainer(cfg, tmp_path / "run", quiet=True).train()
    losses = [r["loss"] for r in metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.95 * first, losses
    assert all(torch.isfinite(torch.tensor(losses)))


def test_batches_are_a_pure_function_of_seed_and_step():
    a = [batch_indices(s, 3, 8, seed=0) for s in range(6)]
    assert a == [batch_indices(s, 3, 8, seed=0) for s in range(6)]
    assert a != [batch_indices(s, 3, 8, seed=1) for s in range(6)]
    # consecutive steps walk through seeded permutations: every epoch sees each clip once
    flat = [i for step in a for i in step]  # 18 indices = 2 full epochs + 2
    assert sorted(flat[:8]) == list(range(8)) and sorted(flat[8:16]) == list(range(8))


# ------------------------------------------------------------------ the run directory

def test_run_dir_has_config_and_metrics(trained_run):
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["train"]["steps"] == 12 and cfg["model"]["hidden_size"] == 32
    assert cfg["train"]["batch_size"] == 2 and "ema_decay" in cfg["train"]  # resolved: defaults filled in
    rows = [r for r in metrics(trained_run) if "loss" in r]
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert {"loss", "lr", "grad_norm", "it_s", "bad_steps_total"} <= r.keys()
        assert r["lr"] == pytest.approx(1e-3) and r["bad_steps_total"] == 0


def test_checkpoint_dir_contents(trained_run):
    ckpt = resolve_checkpoint(trained_run)
    assert ckpt.name == "step_00000012" and ckpt.parent == trained_run / "checkpoints"
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"} <= names
    assert not any(n.endswith((".pt", ".pth", ".pkl", ".bin")) for n in names)  # nothing pickled
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 12 and state["ema_updates"] == 12 and state["bad_steps_total"] == 0
    assert json.loads((ckpt / "config.json").read_text()) == json.loads((trained_run / "config.json").read_text())
    model, ema = weights(ckpt, "model"), weights(ckpt, "ema")
    assert model.keys() == ema.keys()
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # the EMA is its own average
    opt = weights(ckpt, "optimizer")
    assert any(k.endswith("exp_avg") for k in opt) and any(k.endswith("exp_avg_sq") for k in opt)


def test_keep_last_prunes_old_checkpoints(trained_run):
    ckpts = list_checkpoints(trained_run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000009", "step_00000012"]
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["step_00000009", "step_00000012"]


def test_temp_and_incomplete_dirs_are_never_picked(tmp_path, trained_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    ck = run / "checkpoints"
    # a crashed writer's leftover with every file, at a higher step, and an incomplete step dir
    shutil.copytree(ck / "step_00000012", ck / ".tmp-step_00000099-4242")
    shutil.copytree(ck / "step_00000012", ck / "step_00000050")
    (ck / "step_00000050" / "state.json").unlink()
    assert resolve_checkpoint(run).name == "step_00000012"
    assert [p.name for p in list_checkpoints(ck)] == ["step_00000009", "step_00000012"]
    # the next save of a resumed run sweeps the crashed writer's leftover away
    t = Trainer(load_config(run / "config.json", ["train.steps=13"]), run, resume=True, quiet=True)
    assert t.step == 12
    t.train()
    assert not (ck / ".tmp-step_00000099-4242").exists()
    assert resolve_checkpoint(run).name == "step_00000013"


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(tmp_path, trained_run):
    cfg = load_config(trained_run / "config.json")
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg, trained_run, quiet=True)
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(cfg, tmp_path / "fresh", resume=True, quiet=True)


# ------------------------------------------------------------------ resume

def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    extra = ("train.steps=8", "train.checkpoint_every=4", "train.keep_last=5", "conditions.num_classes=48",
             "train.warmup_steps=3", "train.lr_schedule=cosine")
    cfg = tiny_config(*extra)
    Trainer(cfg, tmp_path / "straight", quiet=True).train()

    first = Trainer(cfg, tmp_path / "resumed", quiet=True)
    first.train(max_steps=4)
    assert first.step == 4 and resolve_checkpoint(tmp_path / "resumed").name == "step_00000004"
    del first
    torch.manual_seed(1234)  # global RNG state must not matter
    second = Trainer(cfg, tmp_path / "resumed", resume=True, quiet=True)
    assert second.step == 4
    second.train()

    a = resolve_checkpoint(tmp_path / "straight")
    b = resolve_checkpoint(tmp_path / "resumed")
    assert a.name == b.name == "step_00000008"
    for name in ("model", "ema", "optimizer"):
        assert_same_tensors(weights(a, name), weights(b, name))
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    assert sa["optimizer"] == sb["optimizer"] and sa["ema_updates"] == sb["ema_updates"] == 8
    # and the logged losses of steps 5..8 are the same
    la = [r["loss"] for r in metrics(tmp_path / "straight") if "loss" in r and r["step"] > 4]
    lb = [r["loss"] for r in metrics(tmp_path / "resumed") if "loss" in r and r["step"] > 4]
    assert la == lb and len(la) == 4


# ------------------------------------------------------------------ sampling through the public API

def test_load_pipeline_samples_and_saves_an_mp4(trained_run, tmp_path):
    pipe = moviola.load_pipeline(trained_run, device="cpu")
    video = pipe(labels=[0, 5], steps=3, seed=0)
    assert video.shape == (2, 3, 4, 32, 32)
    assert video.min() >= -1 and video.max() <= 1 and torch.isfinite(video).all()
    out = moviola.save_video(video[0], tmp_path / "v.mp4")
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)


def test_same_seed_same_video_different_seed_different_video(trained_run):
    pipe = moviola.load_pipeline(trained_run, device="cpu")
    a = pipe(labels=[3], steps=3, seed=7)
    b = pipe(labels=[3], steps=3, seed=7)
    c = pipe(labels=[3], steps=3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a video depends on its seed and label only, not on the batch it was made in
    batch = pipe(labels=[1, 3], steps=3, seed=6)
    assert torch.allclose(batch[1], a[0], atol=1e-5)


def test_load_model_reads_ema_or_model_weights(trained_run):
    ckpt = resolve_checkpoint(trained_run)
    ema = moviola.load_model(trained_run)
    raw = moviola.load_model(trained_run, weights="model")
    assert not ema.training
    assert_same_tensors(ema.state_dict(), weights(ckpt, "ema"))
    assert_same_tensors(raw.state_dict(), weights(ckpt, "model"))


def test_pipeline_label_errors(trained_run):
    pipe = moviola.load_pipeline(trained_run, device="cpu")
    with pytest.raises(ValueError, match="out of range"):
        pipe(labels=[48], steps=2)
    with pytest.raises(ValueError, match="class-conditional"):
        pipe(num_videos=1, steps=2)


# ------------------------------------------------------------------ non-finite steps

def inject_nan(monkeypatch, bad_calls):
    """Make the loss of the given 0-based training_losses calls NaN."""
    real = trainer_mod.training_losses
    calls = {"n": 0}

    def patched(*args, **kwargs):
        terms = real(*args, **kwargs)
        if calls["n"] in bad_calls or "all" in bad_calls:
            terms["loss"] = terms["loss"] * float("nan")
        calls["n"] += 1
        return terms

    monkeypatch.setattr(trainer_mod, "training_losses", patched)


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    inject_nan(monkeypatch, {2})
    seen: list[int] = []
    run = tmp_path / "run"
    t = Trainer(tiny_config("train.steps=6"), run, quiet=True,
                on_step=lambda step, out: seen.append(step))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train()
    assert seen == [1, 2, 4, 5, 6]  # the skipped step (the 3rd) gets no callback
    rows = metrics(run)
    skipped = [r for r in rows if "skipped_step" in r]
    assert len(skipped) == 1 and skipped[0]["bad_steps_total"] == 1
    assert [r["bad_steps_total"] for r in rows if "loss" in r] == [0, 0, 1, 1, 1]
    ckpt = resolve_checkpoint(run)
    assert json.loads((ckpt / "state.json").read_text())["bad_steps_total"] == 1
    assert json.loads((ckpt / "state.json").read_text())["ema_updates"] == 5  # no EMA update on the bad step
    after = weights(ckpt, "model")
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_the_last_step_skipped_still_writes_the_final_checkpoint(tmp_path, monkeypatch):
    inject_nan(monkeypatch, {3})
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=4"), run, quiet=True).train()
    assert resolve_checkpoint(run).name == "step_00000004"


def test_a_bad_gradient_is_skipped_without_touching_the_weights(tmp_path):
    t = Trainer(tiny_config("train.steps=1"), tmp_path / "run", quiet=True)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    hook = t.model.final_layer.linear.weight.register_hook(lambda g: g * float("inf"))
    assert t.train_step(0) is None
    hook.remove()
    assert_same_tensors(before, t.model.state_dict())
    assert t.ema.updates == 0
    assert t.train_step(0) is not None


def test_consecutive_bad_steps_stop_the_run_with_a_message(tmp_path, monkeypatch):
    inject_nan(monkeypatch, {"all"})
    run = tmp_path / "run"
    t = Trainer(tiny_config("train.steps=20", "train.max_bad_steps=3", "train.checkpoint_every=10"), run, quiet=True)
    with pytest.raises(RuntimeError, match=r"3 consecutive steps had a non-finite loss") as e:
        t.train()
    assert "train.lr" in str(e.value)
    assert t.step == 2 and t.bad_steps_total == 3
    assert len([r for r in metrics(run) if "skipped_step" in r]) == 3
    assert list_checkpoints(run / "checkpoints") == []  # nothing was written from a diverged model
