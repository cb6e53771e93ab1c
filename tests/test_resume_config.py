"""``moviola train CONFIG --resume``: a resumed run continues the run's saved config. A CONFIG or
``--set`` that differs from it is refused with the keys that differ (one line, exit 2, the run
directory untouched); only the keys that extend or move a run may change, each named with --set."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from moviola.cli import main
from moviola.cli.train import RESUMABLE_KEYS

YAML = """\
name: resume-tiny
model: {patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
conditions: {num_classes: 48}
data: {size: 32, frames: 4, count: 8}
train: {steps: 2, batch_size: 2, lr: 1e-3, log_every: 1, checkpoint_every: 2, device: cpu, precision: fp32}
"""


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(run: Path) -> dict[str, str]:
    """Every file of a run directory and a hash of its bytes: equal snapshots = untouched."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def newest_step(run: Path) -> int:
    return max(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))


@pytest.fixture()
def started(tmp_path, capsys) -> tuple[Path, Path]:
    """A run started with `--set` (as the README's own-data form is): 2 steps done, checkpointed."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(YAML)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--set", "data.count=6", "--quiet")
    assert code == 0, err
    return cfg, run


def test_the_same_config_resumes(started, capsys):
    cfg, run = started
    code, out, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--resume", "--set", "data.count=6",
                             "--steps", "4", "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4 and newest_step(run) == 4


def test_a_config_that_differs_is_refused_naming_the_keys(started, capsys):
    cfg, run = started
    before = snapshot(run)
    other = cfg.with_name("other.yaml")
    other.write_text(YAML.replace("batch_size: 2", "batch_size: 4"))
    code, _, err = run_cli(capsys, "train", other, "--run-dir", run, "--resume", "--set", "data.count=6", "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moviola: error: --resume"), err
    assert "train.batch_size (saved 2, now 4)" in lines[0] and str(run / "config.json") in lines[0]
    assert "data.count" not in lines[0]  # named by --set with the value the run has: no difference
    assert snapshot(run) == before

    # the README's form without the run's --set: the YAML alone is another dataset size, refused
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--resume", "--quiet")
    assert code == 2 and "data.count (saved 6, now 8)" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_set_of_a_key_that_makes_another_run_is_refused(started, capsys):
    _, run = started
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "--run-dir", run, "--resume", "--set", "train.lr=5e-4", "--quiet")
    assert code == 2
    assert "train.lr (saved 0.001, now 0.0005)" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_more_steps_named_with_set_continue_and_stay_the_runs(started, capsys):
    cfg, run = started
    code, out, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--resume", "--set", "data.count=6",
                             "--set", "train.steps=4", "--set", "train.checkpoint_every=1", "--quiet")
    assert code == 0, err
    assert "train.steps 2 → 4" in err  # said, not silent
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-2:] == ["step_00000003", "step_00000004"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 4 and saved["data"]["count"] == 6  # the next resume continues these
    # a resumable key that only the YAML changes is not named: refused
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--resume", "--set", "data.count=6", "--quiet")
    assert code == 2 and "train.steps (saved 4, now 2)" in err


def test_resume_without_a_config_keeps_working(started, capsys):
    _, run = started
    code, out, err = run_cli(capsys, "train", "--resume", "--run-dir", run, "--steps", "3", "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 3
    assert json.loads((run / "config.json").read_text())["data"]["count"] == 6  # the run's own dataset


def test_an_old_format_saved_config_equal_in_meaning_is_not_a_difference(tmp_path, capsys):
    """A run saved before the conditions section (model.num_classes) resumes with today's YAML."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(YAML)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["model"]["num_classes"] = saved.pop("conditions")["num_classes"]  # the old key, no conditions section
    del saved["train"]["task"]  # saved before train.task existed
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    code, out, err = run_cli(capsys, "train", cfg, "--run-dir", run, "--resume", "--steps", "3", "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 3


def test_a_vae_run_is_not_resumed_as_another_task(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(YAML)
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "train-vae", "--resume", "--run-dir", run, "--quiet")
    assert code == 2 and "moviola train --resume --run-dir" in err and len(err.strip().splitlines()) == 1


def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", "--run-dir", tmp_path, "--quiet")
    assert code == 2 and "config.json" in err and str(tmp_path) in err


def test_the_resume_help_names_the_keys_that_may_change(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(k in text for k in RESUMABLE_KEYS)
