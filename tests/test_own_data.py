"""Training on your own videos (docs/own-data.md) as a first-hour user meets it: a file skipped while
the latent cache fills counts once, caption labels a model cannot take are refused before any
compute, ``data.clip_start``, ``moviola data shapes`` never overwrites, and a closed stdout ends a
command quietly (issue 14)."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moviola.cli import main
from moviola.config import ConfigError, load_config
from moviola.data import build_dataset
from moviola.data.folders import VideoFolder
from moviola.data.latent_cache import dataset_fingerprint
from moviola.data.shapes import write_shapes_folder
from moviola.io.checkpoint import resolve_checkpoint
from moviola.video import save_video
from test_reliability import assert_same_checkpoint, one_line_error, write_webm

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2}


def run_yaml(tmp_path: Path, folder: Path, name: str = "cfg", data: dict | None = None, **sections) -> Path:
    """A tiny pixel-space run on ``folder``: 4-frame 32 px clips, batch 2, fp32 on the CPU."""
    cfg = {"name": "own", "model": TINY_MODEL, "autoencoder": {"kind": "identity"},
           "data": {"dataset": "folder", "root": str(folder), "size": 32, "frames": 4, **(data or {})},
           "train": {"steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2, "device": "cpu",
                     "precision": "fp32"}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


# ------------------------------------------------------------------ 1. skipped once with a latent cache

def test_a_file_found_short_while_the_latent_cache_fills_counts_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOVIOLA_CACHE", str(tmp_path / "cache"))
    folder = write_shapes_folder(tmp_path / "v", split="test", count=4, size=32, frames=8)
    write_webm(folder / "short.webm", 3)  # no frame count in its header: found when the cache reads it
    cfg = run_yaml(tmp_path, folder, data={"latent_cache": True})
    for run in (tmp_path / "run", tmp_path / "again"):  # a first run fills the cache, a second one reads it
        assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
        out = capsys.readouterr().out
        counts = [r["data_skipped"] for r in rows(run, "metrics.jsonl") if "data_skipped" in r]
        assert counts == [{"too_short": 1}], run  # one row, one count: not again after step 1
        assert "data: skipped 1 unusable items {'too_short': 1}: short.webm (too_short)" in out
        assert rows(run, "data_skipped.jsonl") == [{"file": "short.webm", "reason": "too_short"}]
        assert json.loads((resolve_checkpoint(run) / "state.json").read_text())["data_bad"] == {
            "short.webm": "too_short"}
    # a resume of the first run: still once
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "run"), "--steps", "6"]) == 0
    counts = [r["data_skipped"] for r in rows(tmp_path / "run", "metrics.jsonl") if "data_skipped" in r]
    assert counts and all(c == {"too_short": 1} for c in counts)
    assert rows(tmp_path / "run", "data_skipped.jsonl") == [{"file": "short.webm", "reason": "too_short"}]


# ------------------------------------------------------------------ 2. labels checked when the dataset is built

def labelled_folder(root: Path, labels: list) -> Path:
    folder = write_shapes_folder(root, split="test", count=len(labels), size=32, frames=8)
    lines = [json.dumps({"file": f"{i:06d}.mp4", "caption": "a clip", **({} if y is ... else {"label": y})})
             for i, y in enumerate(labels)]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_label_out_of_range_is_refused_before_any_compute_naming_the_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOVIOLA_CACHE", str(tmp_path / "cache"))
    folder = labelled_folder(tmp_path / "v", [0, 5, 1, 9])
    cfg = run_yaml(tmp_path, folder, data={"latent_cache": True}, conditions={"num_classes": 4})
    run = tmp_path / "runs" / "r"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 2
    line = one_line_error(capsys.readouterr().err, str(folder / "captions.jsonl"), "line 2", "'000001.mp4'",
                          "label 5", "conditions.num_classes=4", "0..3", "(and 1 more lines like it)")
    assert "fix the label, or set conditions.num_classes" in line
    assert not (tmp_path / "runs").exists()  # no run directory
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing encoded


@pytest.mark.parametrize("label, problem", [(4, "label 4 is not a class"), (-2, "label -2 is not a class"),
                                            ("3", 'label "3" is not an integer'), (2.0, "label 2.0 is not an integer"),
                                            (True, "label true is not an integer")])
def test_each_kind_of_unusable_label_is_named(tmp_path, label, problem):
    folder = labelled_folder(tmp_path, [0, ..., label])
    ds = VideoFolder(folder, frames=4, size=32)
    with pytest.raises(ValueError, match="line 3 \\(file '000002.mp4'\\)") as e:
        ds.check_captions(num_classes=4)
    assert problem in str(e.value)
    ds.check_captions(num_classes=0)  # an unconditional or text model does not read labels


def test_usable_labels_and_captions_pass_and_text_needs_strings(tmp_path):
    folder = labelled_folder(tmp_path, [0, 3, -1, None, ...])  # -1, null and no label: the null class
    ds = VideoFolder(folder, frames=4, size=32)
    ds.check_captions(num_classes=4, text=True)
    with (folder / "captions.jsonl").open("a") as f:
        f.write(json.dumps({"file": "000000.mp4", "caption": ["a", "list"]}) + "\n")
    ds = VideoFolder(folder, frames=4, size=32)
    ds.check_captions(num_classes=4)  # a class model does not read captions
    with pytest.raises(ValueError, match=r"line 6 \(file '000000.mp4'\): caption \[.*is not a string"):
        ds.check_captions(text=True)


# ------------------------------------------------------------------ 3. data.clip_start

def ramp_folder(root: Path, files: int = 6, frames: int = 20) -> Path:
    """Files whose frame k is the gray level 8 + 12k: a decoded clip says where it starts."""
    root.mkdir(parents=True)
    levels = (8 + 12 * np.arange(frames)).astype(np.uint8)
    video = np.broadcast_to(levels[:, None, None, None], (frames, 16, 16, 3)).copy()
    for i in range(files):
        save_video(video, root / f"{i:02d}.mp4")
    return root


def starts(dataset) -> list[int]:
    first = [float(dataset[i]["video"][:, 0].mean()) for i in range(len(dataset))]  # [-1, 1]
    return [int(round(((v + 1) * 127.5 - 8) / 12)) for v in first]


def test_clip_start_first_is_todays_clip_bit_for_bit(tmp_path):
    folder = ramp_folder(tmp_path / "r", files=2)
    cfg = load_config(overrides=["data.dataset=folder", f"data.root={folder}", "data.frames=4", "data.frame_stride=2"])
    assert cfg.data.clip_start == "first"
    ds, today = build_dataset(cfg.data), VideoFolder(folder, frames=4, stride=2, size=32)
    for i in range(2):
        assert torch.equal(ds[i]["video"], today[i]["video"])
    assert starts(ds) == [0, 0]


def test_clip_start_random_is_a_pure_function_of_seed_and_index(tmp_path):
    folder = ramp_folder(tmp_path / "r")
    write_webm(folder / "zz.webm", 12)  # no frame count in the header: the whole file is decoded first
    cfg = load_config(overrides=["data.dataset=folder", f"data.root={folder}", "data.frames=4",
                                 "data.clip_start=random", "data.seed=3"])
    a = starts(build_dataset(cfg.data))
    torch.manual_seed(123)  # the global RNG plays no part
    assert starts(build_dataset(cfg.data)) == a
    assert len(set(a[:6])) > 2 and all(0 <= s <= 16 for s in a[:6])  # spread over the files, inside them
    assert 0 <= a[6] <= 12 - 4
    other = load_config(overrides=["data.dataset=folder", f"data.root={folder}", "data.frames=4",
                                   "data.clip_start=random", "data.seed=4"])
    assert starts(build_dataset(other.data)) != a
    with pytest.raises(ConfigError, match="data.clip_start=random .* applies to data.dataset=folder"):
        build_dataset(load_config(overrides=["data.clip_start=random"]).data)
    # the latent cache keeps random clips apart from first ones; a first run keeps the key it had
    first = load_config(overrides=["data.dataset=folder", f"data.root={folder}", "data.frames=4", "data.seed=3"])
    ds = build_dataset(first.data)
    before = {k: v for k, v in vars(first.data).items() if k != "clip_start"}
    assert dataset_fingerprint(vars(first.data), ds) == dataset_fingerprint(before, ds)
    assert dataset_fingerprint(vars(cfg.data), ds) != dataset_fingerprint(vars(first.data), ds)


def test_clip_start_random_is_a_function_of_the_file_not_of_its_place_in_the_list(tmp_path):
    """A file added before the others in sort order leaves their starts where they were."""
    folder = ramp_folder(tmp_path / "r", files=4)
    cfg = load_config(overrides=["data.dataset=folder", f"data.root={folder}", "data.frames=4",
                                 "data.clip_start=random", "data.seed=3"])
    before = dict(zip(["00", "01", "02", "03"], starts(build_dataset(cfg.data))))
    shutil.copy(folder / "00.mp4", folder / "0.mp4")  # sorts first
    ds = build_dataset(cfg.data)
    after = dict(zip([p.stem for p in ds.files], starts(ds)))
    assert {k: after[k] for k in before} == before


def test_clip_start_random_trains_the_same_resumed_and_with_workers(tmp_path):
    folder = ramp_folder(tmp_path / "r")
    straight = tmp_path / "straight"
    assert main(["train", str(run_yaml(tmp_path, folder, "a", data={"clip_start": "random"})),
                 "--run-dir", str(straight), "--quiet"]) == 0
    resumed = tmp_path / "resumed"
    cfg = run_yaml(tmp_path, folder, "b", data={"clip_start": "random", "num_workers": 2})
    assert main(["train", str(cfg), "--run-dir", str(resumed), "--steps", "2", "--quiet"]) == 0
    assert main(["train", "--resume", "--run-dir", str(resumed), "--steps", "4", "--quiet"]) == 0
    assert_same_checkpoint(resolve_checkpoint(straight), resolve_checkpoint(resumed))


# ------------------------------------------------------------------ 4. moviola data shapes never overwrites

def test_data_shapes_refuses_to_overwrite_and_overwrites_when_asked(tmp_path, capsys):
    out = tmp_path / "myvideos"
    out.mkdir()
    (out / "captions.jsonl").write_text('{"file": "mine.mp4", "caption": "my own clip"}\n')
    (out / "000001.mp4").write_bytes(b"my own bytes")
    args = ["data", "shapes", "--out", str(out), "--count", "2", "--frames", "4"]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, f"--out {out}", "would overwrite captions.jsonl, 000001.mp4",
                   "another --out", "--overwrite")
    assert (out / "captions.jsonl").read_text() == '{"file": "mine.mp4", "caption": "my own clip"}\n'
    assert (out / "000001.mp4").read_bytes() == b"my own bytes" and not (out / "000000.mp4").exists()
    assert main([*args, "--overwrite"]) == 0
    assert len((out / "captions.jsonl").read_text().splitlines()) == 2 and (out / "000001.mp4").stat().st_size > 100
    # beside other files (yours, with other names) it writes as before
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.mp4").write_bytes(b"mine")
    assert main(["data", "shapes", "--out", str(other), "--count", "1", "--frames", "4"]) == 0
    assert (other / "mine.mp4").read_bytes() == b"mine" and (other / "000000.mp4").is_file()


# ------------------------------------------------------------------ 5. a closed stdout

def test_a_closed_stdout_ends_eval_vae_quietly(tmp_path):
    """``moviola eval-vae ... | head``: the reader is gone before the result is printed."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "moviola.cli", "eval-vae",
                               str(ROOT / "checkpoints" / "shapes-causal-vae-32"),
                               "--shapes", "1", "--frames", "5", "--size", "32", "--quiet"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(capfd, monkeypatch):
    from moviola.cli import evaluate

    def other_pipe(args):
        raise BrokenPipeError(32, "Broken pipe (a subprocess's)")

    monkeypatch.setattr(evaluate, "_cmd_eval_vae", other_pipe)
    assert main(["eval-vae", "x", "--shapes", "1"]) == 1  # stdout (a file here) is open: a fault, said
    one_line_error(capfd.readouterr().err, "Broken pipe (a subprocess's)")
