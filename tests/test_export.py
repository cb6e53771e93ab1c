"""``moviola export``: a shipped checkpoint (config + half-precision EMA weights) loads and
predicts like the EMA model it came from."""
from __future__ import annotations

import torch

import moviola
from moviola.cli import main
from moviola.config import load_config
from moviola.training.trainer import Trainer

TINY = ["name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
        "model.num_heads=2", "conditions.num_classes=48", "data.size=32", "data.frames=4", "data.count=8",
        "train.batch_size=2", "train.lr=1e-3", "train.device=cpu", "train.precision=fp32", "train.steps=6",
        "train.checkpoint_every=6", "sample.steps=3"]


def test_export_fp16_ema_matches_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config(overrides=TINY), run, quiet=True).train()
    out = tmp_path / "shipped"
    assert main(["export", str(run), str(out), "--dtype", "fp16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.safetensors"]

    ema = moviola.load_model(run, weights="ema")
    model_w = moviola.load_model(run, weights="model")
    shipped = moviola.load_model(out)
    assert next(shipped.parameters()).dtype == torch.float32  # cast back on load
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 32, 32, generator=g)
    t = torch.tensor([10, 700])
    cond = moviola.Conditioning(labels=torch.tensor([3, -1]))
    with torch.no_grad():
        ref, got = ema(x, t, cond), shipped(x, t, cond)
    err = (got - ref).abs().max().item()
    assert err < 1e-2 * max(ref.abs().max().item(), 1e-3)  # fp16 rounding of the EMA weights only
    assert not torch.allclose(ema.x_embedder.proj.weight, model_w.x_embedder.proj.weight)  # EMA ≠ raw weights
    video = moviola.load_pipeline(out, device="cpu")(labels=[5], steps=3, seed=0)
    assert video.shape == (1, 3, 4, 32, 32)


def test_export_of_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moviola: error: checkpoint path does not exist")
    assert not (tmp_path / "out").exists()


def test_export_never_deletes_an_existing_directory(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(load_config(overrides=TINY), run, quiet=True).train()
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years")
    assert main(["export", str(run), str(precious)]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "four years"


def test_init_from_a_shipped_checkpoint_warm_starts_every_weight(tmp_path):
    """A later session continues a shipped model: --init-from an exported checkpoint directory."""
    run = tmp_path / "run"
    Trainer(load_config(overrides=TINY), run, quiet=True).train()
    shipped = tmp_path / "shipped"
    export = main(["export", str(run), str(shipped), "--dtype", "fp32"])
    assert export == 0
    warm = Trainer(load_config(overrides=TINY), tmp_path / "warm", quiet=True, init_from=str(shipped))
    ema = moviola.load_model(run, weights="ema")
    for (k, a), b in zip(warm.model.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(a, b), k
    assert warm.step == 0
