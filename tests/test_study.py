"""moviola study: one budget for every variant, reuse and resume, strict study files, the report."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from moviola.cli import main
from moviola.config import ConfigError
from moviola.study import load_study, run_study, variant_config

BASE = {"name": "s", "model": {"size": "tiny", "patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2},
        "conditions": {"num_classes": 48},
        "data": {"size": 32, "frames": 4, "count": 8},
        "train": {"batch_size": 2, "lr": 1e-3, "device": "cpu", "precision": "fp32", "checkpoint_every": 2,
                  "log_every": 1}}


@pytest.fixture()
def study_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = {"name": "tiny", "steps": 2,
            "variants": {"v1": str(tmp_path / "base.yaml"),
                         "v2": {"config": str(tmp_path / "base.yaml"), "set": ["model.layout=late_fusion"]}},
            "eval": {"per_class": 1, "steps": 2, "seed": 0, "val_clips": 6},
            "runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "docs")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_study_trains_scores_and_reports_every_variant(study_file, tmp_path):
    study = load_study(study_file)
    assert variant_config(study, study.variants[1]).model.layout == "late_fusion"
    out = run_study(study, quiet=True, log=lambda m: None)
    assert [r["name"] for r in out["variants"]] == ["v1", "v2"]
    for r in out["variants"]:
        assert r["step"] == 2 and r["scores"]["all"]["n"] == 48 and r["final_loss"] > 0
        assert r["val"]["clips"] == 6 and r["val"]["val_loss"] > 0 and "per_clip" not in r["val"]
    v1, v2 = (json.loads((tmp_path / "runs" / n / "study_val.json").read_text())["val"]["per_clip"] for n in ("v1", "v2"))
    assert out["variants"][1]["val"]["minus_first"] == pytest.approx(sum(b - a for a, b in zip(v1, v2)) / 6)
    assert out["variants"][0]["val"]["minus_first"] == 0.0
    readme = (tmp_path / "docs" / "README.md").read_text()
    assert "held-out loss" in readme and "+0.0000 ± 0.0000" in readme
    assert "| v1 |" in readme and "| v2 |" in readme and f"moviola study {study_file}" in readme
    for png in ("loss.png", "scores.png"):
        assert (tmp_path / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "docs" / "results.json").read_text())["steps"] == 2
    assert "The reading of these results" not in readme  # no reading named, no link


def test_the_report_links_the_reading_a_study_names(study_file, tmp_path):
    spec = yaml.safe_load(study_file.read_text())
    spec["reading"] = "../../latte.md#ablation"
    study_file.write_text(yaml.safe_dump(spec))
    run_study(load_study(study_file), quiet=True, log=lambda m: None)
    readme = (tmp_path / "docs" / "README.md").read_text()
    assert "[../../latte.md#ablation](../../latte.md#ablation)" in readme


def test_finished_runs_are_reused_and_a_bigger_budget_resumes(study_file, tmp_path):
    logs = []
    run_study(load_study(study_file), quiet=True, log=logs.append)
    metrics = (tmp_path / "runs" / "v1" / "metrics.jsonl").read_text()
    logs.clear()
    run_study(load_study(study_file), quiet=True, log=logs.append)
    assert logs == ["study tiny: v1: trained (2 steps), reused", "study tiny: v2: trained (2 steps), reused"]
    assert (tmp_path / "runs" / "v1" / "metrics.jsonl").read_text() == metrics  # nothing retrained or rescored
    spec = yaml.safe_load(study_file.read_text())
    spec["steps"] = 4
    study_file.write_text(yaml.safe_dump(spec))
    logs.clear()
    out = run_study(load_study(study_file), quiet=True, log=logs.append)
    assert "study tiny: v1: resuming at step 2" in logs
    assert all(r["step"] == 4 for r in out["variants"])


def test_a_run_with_another_config_is_refused_not_reused(study_file, tmp_path):
    run_study(load_study(study_file), only=["v1"], quiet=True, log=lambda m: None)
    spec = yaml.safe_load(study_file.read_text())
    spec["set"] = ["train.lr=5e-4"]
    study_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="trained with another config"):
        run_study(load_study(study_file), quiet=True, log=lambda m: None)


def test_study_files_are_strict(study_file, tmp_path):
    spec = yaml.safe_load(study_file.read_text())
    bad = dict(spec, variant=spec["variants"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown key 'variant'; did you mean 'variants'"):
        load_study(tmp_path / "bad.yaml")
    bad = dict(spec, eval={"per_clas": 1})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="did you mean 'per_class'"):
        load_study(tmp_path / "bad.yaml")
    bad = dict(spec, variants={"v1": {"config": spec["variants"]["v1"], "set": ["model.num_heads=3"]}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="num_heads"):  # every variant's config is checked before any compute
        run_study(load_study(tmp_path / "bad.yaml"), log=lambda m: None)
    assert not (tmp_path / "runs").exists()
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2


def test_a_run_saved_before_new_config_keys_existed_is_still_reused(study_file, tmp_path):
    run_study(load_study(study_file), only=["v1"], quiet=True, log=lambda m: None)
    saved = tmp_path / "runs" / "v1" / "config.json"
    old = json.loads(saved.read_text())
    del old["data"]["latent_cache"]  # as written by a moviola without that key
    saved.write_text(json.dumps(old))
    logs = []
    run_study(load_study(study_file), only=["v1"], quiet=True, log=logs.append)
    assert logs == ["study tiny: v1: trained (2 steps), reused"]


def test_a_run_past_the_budget_is_refused(study_file, tmp_path):
    spec = yaml.safe_load(study_file.read_text())
    spec["steps"] = 4
    study_file.write_text(yaml.safe_dump(spec))
    run_study(load_study(study_file), only=["v1"], quiet=True, log=lambda m: None)
    spec["steps"] = 2
    study_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="trained 4 steps, more than the study's budget of 2"):
        run_study(load_study(study_file), only=["v1"], quiet=True, log=lambda m: None)


def test_a_variant_whose_class_count_does_not_fit_is_refused_before_any_training(tmp_path):
    from moviola.config import ConfigError
    from moviola.study import load_study, run_study

    study_file = tmp_path / "s.yaml"
    study_file.write_text(f"name: s\nsteps: 2\nruns_dir: {tmp_path / 'runs'}\nout_dir: {tmp_path / 'out'}\n"
                          "variants:\n  good: {config: configs/shapes/ablation/base.yaml}\n"
                          "  bad: {config: configs/shapes/ablation/base.yaml, set: [conditions.num_classes=10]}\n")
    with pytest.raises(ConfigError, match="conditions.num_classes=10 does not fit Moving Shapes"):
        run_study(load_study(study_file), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_a_variant_starts_from_the_weights_it_names(study_file, tmp_path):
    """init_from (per variant, or for all at the top): the run starts from those weights (train --init-from);
    with a negligible learning rate its checkpoint holds them, while a variant without it starts fresh."""
    from moviola.io.checkpoint import list_checkpoints, load_weights

    spec = yaml.safe_load(study_file.read_text())
    spec["variants"] = {"v1": str(tmp_path / "base.yaml")}
    study_file.write_text(yaml.safe_dump(spec))
    run_study(load_study(study_file), quiet=True, log=lambda m: None)
    source = list_checkpoints(tmp_path / "runs" / "v1" / "checkpoints")[-1]
    spec.update(name="warm", runs_dir=str(tmp_path / "warm"), out_dir=str(tmp_path / "warm-docs"),
                set=["train.lr=1e-12", "train.warmup_steps=0"], init_from=str(tmp_path / "runs" / "v1"),
                variants={"from-v1": str(tmp_path / "base.yaml"),
                          "fresh": {"config": str(tmp_path / "base.yaml"), "init_from": None}})
    study_file.write_text(yaml.safe_dump(spec))
    out = run_study(load_study(study_file), quiet=True, log=lambda m: None)
    assert {r["name"]: r["init_from"] for r in out["variants"]} == {"from-v1": str(tmp_path / "runs" / "v1"),
                                                                     "fresh": None}
    want = load_weights(source, "ema")
    for name, same in (("from-v1", True), ("fresh", False)):
        got = load_weights(list_checkpoints(tmp_path / "warm" / name / "checkpoints")[-1], "model")
        assert all(torch.allclose(got[k], want[k], atol=1e-9) for k in want) == same, name
    assert "started from" in (tmp_path / "warm-docs" / "README.md").read_text()
    run_study(load_study(study_file), quiet=True, log=lambda m: None)  # unchanged: reused
    from safetensors.torch import load_file, save_file

    weights = source / "ema.safetensors"  # the source retrained: the finished run is no longer "from" it
    tensors = load_file(weights)
    save_file({k: v + 1 for k, v in tensors.items()}, weights)
    with pytest.raises(ConfigError, match="other weights"):
        run_study(load_study(study_file), quiet=True, log=lambda m: None)
    save_file(tensors, weights)
    spec["init_from"] = str(tmp_path / "nowhere")
    study_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="nowhere"):
        run_study(load_study(study_file), quiet=True, log=lambda m: None)


def test_eval_frames_scores_videos_of_that_length(study_file, tmp_path, monkeypatch):
    from moviola.eval import shapes_eval

    lengths = []
    real = shapes_eval.summarize
    monkeypatch.setattr(shapes_eval, "summarize", lambda v, t, p=None: lengths.append(v[0].shape[1]) or real(v, t, p))
    spec = yaml.safe_load(study_file.read_text())
    spec["variants"] = {"v1": str(tmp_path / "base.yaml")}
    spec["eval"].update(frames=3, val_clips=0)
    study_file.write_text(yaml.safe_dump(spec))
    out = run_study(load_study(study_file), quiet=True, log=lambda m: None)
    assert lengths == [3] and out["variants"][0]["val"] is None
    assert json.loads((tmp_path / "runs" / "v1" / "study_eval.json").read_text())["settings"]["frames"] == 3
    assert "of 3 frames" in (tmp_path / "docs" / "README.md").read_text()
    spec["eval"]["frames"] = 0
    study_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="frames"):
        load_study(study_file)
