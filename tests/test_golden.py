"""Behaviour pinned before the "one house for four families" move, held bit for bit after it.

``tests/golden/`` holds what the code of commit 1d4f633 computed (``tests/golden/make_golden.py``
wrote it): the denoiser output of every Latte switch combination (weights filled by parameter
name, so a renamed key fails too), the shipped pipelines' videos for fixed seeds and every
sampler, the shipped autoencoders' latents and reconstructions, the first training steps, and a
run directory checkpointed at step 2 that must resume to the same step-4 weights.

Floating-point results depend on the CPU's vector unit: on a CPU of the kind the pins were made on
(``meta.json``'s ``cpu_capability``) the comparison is exact; on another kind it is within a small
tolerance, and says so in the assertion message.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import moviola
from moviola import Conditioning
from moviola.config import config_from_json, load_config
from moviola.data.shapes import MovingShapes
from moviola.models.registry import build_model
from moviola.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
META = json.loads((GOLDEN / "meta.json").read_text())
REF = load_file(str(GOLDEN / "outputs.safetensors"))
SAME_CPU = torch.backends.cpu.get_cpu_capability() == META["cpu_capability"]
B, C, T, H, W = 2, 3, 4, 8, 8


def assert_pinned(key: str, value: torch.Tensor, atol: float = 1e-4) -> None:
    ref = REF[key]
    value = value.detach().float()
    assert value.shape == ref.shape, (key, tuple(value.shape), tuple(ref.shape))
    if SAME_CPU:
        diff = (value - ref).abs().max().item()
        assert torch.equal(value, ref), f"{key}: not bit-identical to the pin (max |diff| {diff:.3g})"
    else:
        torch.testing.assert_close(value, ref, rtol=1e-4, atol=atol,
                                   msg=lambda m: f"{key} (pinned on {META['cpu_capability']}, "
                                                 f"compared within tolerance): {m}")


def fill_by_name(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.state_dict().items():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name and name.endswith(".weight") else 0.2 * noise)


def inputs(caption: bool, context: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, T, H, W, generator=g)
    t_frame = torch.randint(0, 1000, (B, T), generator=g)
    cond = Conditioning(labels=torch.tensor([1, -1]))
    if caption:
        cond = Conditioning(text=torch.randn(B, 6, 24, generator=g),
                            text_mask=torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool))
    if context:
        m = torch.zeros(B, 1, T, 1, 1)
        m[0, :, 0] = 1
        cond.context, cond.context_mask = x.flip(0) * m, m
    return x, torch.tensor([10, 700]), t_frame, cond


def build_pinned(saved: dict) -> torch.nn.Module:
    """The model a pinned ``model:`` section describes, built as a run builds it."""
    cfg = load_config(data={"model": saved, "data": {"dataset": "folder", "root": "clips", "size": 8, "frames": 4}})
    return build_model(cfg.model, cfg.conditions, C)


@pytest.mark.parametrize("name", sorted(META["denoisers"]))
@torch.no_grad()
def test_denoiser_outputs_are_pinned(name):
    saved = META["denoisers"][name]
    torch.manual_seed(0)
    model = build_pinned(saved).eval()
    fill_by_name(model)
    x, t, t_frame, cond = inputs(caption=bool(saved["caption_channels"]), context=saved["context_frames"])
    assert_pinned(f"{name}/t", model(x, t, cond))
    assert_pinned(f"{name}/t_frame", model(x, t_frame, cond))
    if saved["patch_embed"] == "frame":
        assert_pinned(f"{name}/images", model(x, t, cond, num_images=1))


@pytest.mark.parametrize("name", sorted(META["init"]))
def test_initialization_is_pinned(name):
    """A new run with the same seed starts from the same weights (construction order kept)."""
    import hashlib

    torch.manual_seed(0)
    model = build_pinned(META["denoisers"][name])
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    if not SAME_CPU:
        pytest.skip(f"initialization hashes were taken on {META['cpu_capability']}")
    assert h.hexdigest() == META["init"][name]


@torch.no_grad()
def test_shipped_class_pipeline_is_pinned_for_every_sampler():
    pipe = moviola.load_pipeline(ROOT / "checkpoints/shapes-latte-tiny", device="cpu")
    for sampler, steps in (("ddim", 8), ("ddpm", 6), ("dpm++2m", 6)):
        video = pipe(labels=[5], num_frames=8, steps=steps, sampler=sampler, cfg=4.0, seed=0)
        assert_pinned(f"pipe/tiny/{sampler}", video, atol=2e-3)


@torch.no_grad()
def test_shipped_t2v_pipeline_is_pinned():
    pipe = moviola.load_pipeline(ROOT / "checkpoints/shapes-latte-t2v", device="cpu")
    assert_pinned("pipe/t2v/text", pipe(prompt=["a red circle moving right"], steps=8, seed=0), atol=2e-3)
    frame = MovingShapes(split="test", count=4, size=32, frames=17, seed=0)[1]["video"][:, 0]  # (3, H, W)
    video = pipe(prompt=["a green square moving up"], image=frame, steps=8, seed=1,
                 negative_prompt="a blue triangle moving left")
    assert_pinned("pipe/t2v/i2v", video, atol=2e-3)
    assert_pinned("pipe/t2v/i2v_only_image", pipe(prompt=[""], image=frame, steps=6, seed=2, cfg=2.0), atol=2e-3)


@pytest.mark.parametrize("name", ["shapes-causal-vae-32", "shapes-frame-vae-32", "shapes-temporal-decoder-32"])
@torch.no_grad()
def test_shipped_autoencoders_are_pinned(name):
    clip = MovingShapes(split="test", count=2, size=32, frames=9, seed=0)[0]["video"][None]  # (1, 3, 9, 32, 32)
    ae = moviola.load_autoencoder(ROOT / "checkpoints" / name).eval()
    z = ae.encode(clip)
    assert_pinned(f"ae/{name}/latent", z)
    assert_pinned(f"ae/{name}/recon", ae.decode(z))


def _assert_weights(trainer: Trainer) -> None:
    for prefix, module in (("model", trainer.model), ("ema", trainer.ema.model)):
        for k, v in module.state_dict().items():
            assert_pinned(f"train/step4/{prefix}/{k}", v, atol=1e-5)


def test_training_from_scratch_is_pinned(tmp_path):
    cfg = load_config(overrides=[*META["train_config_overrides"], "train.steps=4", "train.checkpoint_every=2"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "loss", "grad_norm", "lr", "mse")
    got = [[r.get(k) for k in keys] for r in rows if "loss" in r]
    want = [[r.get(k) for k in keys] for r in META["train_losses"] if "loss" in r]
    if SAME_CPU:
        assert got == want
    else:
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-6)
    _assert_weights(trainer)


def test_a_run_started_before_the_move_resumes_to_the_same_weights(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run_step2", run)
    cfg = config_from_json(run / "config.json")  # written by the code before the move
    trainer = Trainer(cfg, run, resume=True, quiet=True)
    assert trainer.step == 2
    trainer.train()
    _assert_weights(trainer)
