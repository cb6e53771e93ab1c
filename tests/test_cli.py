"""The command line: user errors are one ``moviola: error:`` line and exit code 2 (never a
traceback, never a half-made run directory); train / sample / data write what they promise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from moviola.cli import main
from moviola.training import trainer as trainer_mod

TINY_YAML = """\
name: cli-tiny
model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
conditions: {num_classes: 48}
data: {size: 32, frames: 4, count: 8}
train: {steps: 4, batch_size: 2, lr: 1e-3, log_every: 2, checkpoint_every: 2, device: cpu, precision: fp32}
sample: {steps: 3, cfg: 2.0}
"""


def write_config(tmp_path: Path, text: str = TINY_YAML, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moviola: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """A tiny class-conditional run trained through ``moviola train``."""
    tmp = tmp_path_factory.mktemp("cli")
    run_dir = tmp / "run"
    code = main(["train", str(write_config(tmp)), "--run-dir", str(run_dir), "--quiet"])
    assert code == 0
    return run_dir


# ------------------------------------------------------------------ user errors

def test_unknown_config_key_suggests_and_exits_2(tmp_path, capsys):
    cfg = write_config(tmp_path, TINY_YAML.replace("lr: 1e-3", "lrr: 1e-3"))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", cfg, "--run-dir", run_dir)
    assert code == 2
    assert_one_line_error(err, "train.lrr", "did you mean 'train.lr'")
    assert not run_dir.exists()


def test_unknown_top_level_key_suggests(tmp_path, capsys):
    cfg = write_config(tmp_path, TINY_YAML.replace("model:", "modle:"))
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, "modle", "did you mean 'model'")
    assert not (tmp_path / "run").exists()


def test_unknown_set_key_suggests(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", write_config(tmp_path), "--run-dir", tmp_path / "run",
                           "--set", "train.stepz=3")
    assert code == 2
    assert_one_line_error(err, "did you mean 'train.steps'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,needles", [
    (("steps: 4", 'steps: "abc"'), ("train.steps", "integer")),
    (("lr: 1e-3", "lr: fast"), ("train.lr",)),
    (("num_classes: 48", "num_classes: [1]"), ("conditions.num_classes",)),
])
def test_wrong_type_exits_2(tmp_path, capsys, edit, needles):
    cfg = write_config(tmp_path, TINY_YAML.replace(*edit))
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,needles", [
    (["model.patch_size=4", "data.size=30"], ("data.size=30", "not divisible")),
    (["model.depth=3"], ("model.depth",)),
    (["data.size=48"], ("size",)),  # divisible by the patch, but not a Moving Shapes size
    (["data.frames=40"], ("frames",)),  # more frames than a shape stays inside the canvas
    (["train.precision=fp16"], ("fp16",)),  # CUDA only
])
def test_impossible_shapes_exit_2_before_any_run_dir(tmp_path, capsys, overrides, needles):
    sets = [a for o in overrides for a in ("--set", o)]
    code, _, err = run_cli(capsys, "train", write_config(tmp_path), "--run-dir", tmp_path / "run", *sets)
    assert code == 2
    assert_one_line_error(err, *needles)
    assert not (tmp_path / "run").exists()


def test_unavailable_device_exits_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "train", write_config(tmp_path), "--run-dir", tmp_path / "run",
                           "--device", "cuda")
    assert code == 2
    assert_one_line_error(err, "cuda")
    assert not (tmp_path / "run").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", tmp_path / "nope.yaml", "--run-dir", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, "nope.yaml", "not found")
    assert not (tmp_path / "run").exists()


def test_train_without_config_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "run")
    assert code == 2
    assert_one_line_error(err, "CONFIG")


def test_missing_checkpoint_for_sample_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", tmp_path / "missing", "--out", tmp_path / "x.mp4")
    assert code == 2
    assert_one_line_error(err, "does not exist", "missing")
    assert not (tmp_path / "x.mp4").exists()


def test_directory_without_checkpoint_for_sample_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "sample", tmp_path / "empty", "--out", tmp_path / "x.mp4")
    assert code == 2
    assert_one_line_error(err, "no checkpoint")


def test_sample_needs_an_output_and_a_known_suffix(cli_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", cli_run)
    assert code == 2
    assert_one_line_error(err, "--out")
    code, _, err = run_cli(capsys, "sample", cli_run, "--out", tmp_path / "x.avi")
    assert code == 2
    assert_one_line_error(err, ".mp4")


def test_out_of_range_label_exits_2(cli_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", cli_run, "--label", "48", "--out", tmp_path / "x.mp4", "--quiet")
    assert code == 2
    assert_one_line_error(err, "out of range")


def test_subprocess_unknown_key_is_one_clean_line(tmp_path):
    cfg = write_config(tmp_path, TINY_YAML.replace("lr: 1e-3", "lrr: 1e-3"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "moviola", "train", str(cfg), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "did you mean 'train.lr'")
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_diverged_run_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    real = trainer_mod.training_losses

    def nan_loss(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer_mod, "training_losses", nan_loss)
    code, _, err = run_cli(capsys, "train", write_config(tmp_path), "--run-dir", tmp_path / "run", "--quiet",
                           "--set", "train.max_bad_steps=2")
    assert code == 1
    assert_one_line_error(err, "2 consecutive steps")


# ------------------------------------------------------------------ data

def test_data_shapes_writes_mp4s_and_captions(tmp_path, capsys):
    out_dir = tmp_path / "shapes"
    code, out, _ = run_cli(capsys, "data", "shapes", "--out", out_dir, "--split", "test", "--count", "4",
                           "--frames", "4")
    assert code == 0 and "4" in out
    mp4s = sorted(out_dir.glob("*.mp4"))
    assert len(mp4s) == 4
    rows = [json.loads(line) for line in (out_dir / "captions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [p.name for p in mp4s]
    assert [r["label"] for r in rows] == [0, 1, 2, 3]  # the test split cycles through all 48 labels
    assert all({"caption", "colour", "shape", "direction"} <= r.keys() for r in rows)
    with av.open(str(mp4s[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)


def test_data_shapes_rejects_zero_count(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "shapes", "--out", tmp_path / "s", "--count", "0")
    assert code == 2
    assert_one_line_error(err, "--count")


# ------------------------------------------------------------------ train and sample

def test_train_writes_a_run(cli_run):
    assert (cli_run / "config.json").is_file() and (cli_run / "metrics.jsonl").is_file()
    assert json.loads((cli_run / "config.json").read_text())["name"] == "cli-tiny"
    assert sorted(p.name for p in (cli_run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def test_train_resume_continues_and_refuses_to_overwrite(cli_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    code, _, err = run_cli(capsys, "train", write_config(tmp_path), "--run-dir", run, "--quiet")
    assert code == 2
    assert_one_line_error(err, "--resume")
    code, out, _ = run_cli(capsys, "train", "--resume", "--run-dir", run, "--steps", "6", "--quiet")
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["step"] == 6
    assert (run / "checkpoints" / "step_00000006").is_dir()


def test_sample_png_grid(cli_run, tmp_path, capsys):
    out = tmp_path / "x.png"
    code, stdout, _ = run_cli(capsys, "sample", cli_run, "--label", "3", "--label", "7", "--out", out, "--quiet")
    assert code == 0 and "x.png" in stdout
    img = np.asarray(Image.open(out))
    # rows = 2 videos, columns = 4 frames, 2-pixel separators
    assert img.shape == (2 * 32 + 2, 4 * 32 + 3 * 2, 3)


def test_sample_single_mp4(cli_run, tmp_path, capsys):
    out = tmp_path / "one.mp4"
    code, _, _ = run_cli(capsys, "sample", cli_run, "--label", "5", "--out", out, "--quiet", "--frames", "6")
    assert code == 0
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)


def test_sample_out_dir_writes_files_and_manifest(cli_run, tmp_path, capsys):
    out_dir = tmp_path / "samples"
    code, _, _ = run_cli(capsys, "sample", cli_run, "--label", "0", "--label", "47", "--num-videos", "2",
                         "--seed", "10", "--out-dir", out_dir, "--quiet")
    assert code == 0
    rows = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [0, 0, 47, 47]
    assert [r["seed"] for r in rows] == [10, 11, 12, 13]
    from moviola.data.shapes import caption, label_to_attributes

    for r in rows:
        assert r["caption"] == caption(*label_to_attributes(r["label"]))
        assert (r["colour"], r["shape"], r["direction"]) == label_to_attributes(r["label"])
        assert (out_dir / r["file"]).is_file() and r["file"].endswith(".mp4")
    assert len(list(out_dir.glob("*.mp4"))) == 4


def test_sample_is_reproducible_from_the_cli(cli_run, tmp_path, capsys):
    for name in ("a", "b"):
        code, _, _ = run_cli(capsys, "sample", cli_run, "--label", "9", "--seed", "3",
                             "--out-dir", tmp_path / name, "--format", "png", "--quiet")
        assert code == 0
    a = np.asarray(Image.open(tmp_path / "a" / "00000.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "00000.png"))
    assert np.array_equal(a, b)
