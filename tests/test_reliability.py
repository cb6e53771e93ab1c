"""The reliability promises, in process: exact resume (RNG states, loss-log window), safe loading of
foreign weights, checks before any tensor is used, numerical faults, disk faults, signals and
hostile data folders. The SIGKILL tests (real processes) are in test_crash_resume.py; the
property-based config / argument tests in test_hostile_inputs.py. docs/reliability.md has the table.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import moviola
from moviola.cli import main
from moviola.config import load_config
from moviola.data.folders import ImageFolder, VideoFolder
from moviola.data.shapes import write_shapes_folder
from moviola.io import checkpoint as ckpt_mod
from moviola.training import trainer as trainer_mod
from moviola.io.checkpoint import (CheckpointError, CheckpointWriteError, list_checkpoints,
                                         load_foreign_state_dict, resolve_checkpoint)
from moviola.training.trainer import CheckpointWriteFailed, Trainer
from moviola.video import save_video

TINY = [
    "name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
    "model.num_heads=2", "data.size=32", "data.frames=4", "data.count=8", "train.batch_size=2",
    "train.lr=1e-3", "train.device=cpu", "train.precision=fp32", "train.log_every=1",
    "train.checkpoint_every=1000", "sample.steps=4",
]
LOSS_KEYS = ("step", "loss", "grad_norm", "lr", "mse", "bad_steps_total")  # not it_s / time


def tiny_config(*extra: str):
    return load_config(overrides=[*TINY, *extra])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def loss_log(run: Path) -> list[tuple]:
    return [tuple(r.get(k) for k in LOSS_KEYS) for r in metrics(run) if "loss" in r]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Bit-identical weights, EMA, optimizer tensors and optimizer / EMA counters."""
    for name in ("model", "ema", "optimizer"):
        ta, tb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    for key in ("step", "optimizer", "ema_updates", "bad_steps_total", "log_window"):
        assert sa[key] == sb[key], key


def one_line_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moviola: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)
    return lines[0]


# ------------------------------------------------------------------ exact resume, signals

def global_rng_noise(trainer: Trainer) -> None:
    """A dropout-like consumer of the global torch / numpy / python RNGs inside the forward pass,
    so the test fails unless a resume restores all three."""
    def hook(module, inputs, output):
        return output + 1e-3 * torch.randn_like(output) + 1e-3 * (np.random.rand() + random.random())

    trainer.model.final_layer.register_forward_hook(hook)


def test_sigterm_then_resume_is_bit_identical_including_rng_and_loss_log(tmp_path):
    # log_every=4 and a stop at step 5: the resumed run must finish the loss window of steps 5..8
    cfg = tiny_config("train.steps=10", "train.log_every=4", "conditions.num_classes=48", "train.warmup_steps=3",
                      "train.lr_schedule=cosine", "train.checkpoint_every=3", "train.keep_last=10")
    straight = Trainer(cfg, tmp_path / "straight", quiet=True)
    global_rng_noise(straight)
    straight.train()

    def stop_at_5(step, out):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    first = Trainer(cfg, tmp_path / "resumed", quiet=True, on_step=stop_at_5)
    global_rng_noise(first)
    first.train()
    assert first.stopped_by == "SIGTERM" and first.step == 5
    assert resolve_checkpoint(tmp_path / "resumed").name == "step_00000005"  # written at the stop
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
    del first
    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # what the process did before must not matter
    second = Trainer(cfg, tmp_path / "resumed", resume=True, quiet=True)
    global_rng_noise(second)
    second.train()
    assert_same_checkpoint(resolve_checkpoint(tmp_path / "straight"), resolve_checkpoint(tmp_path / "resumed"))
    assert loss_log(tmp_path / "straight") == loss_log(tmp_path / "resumed")
    assert [r[0] for r in loss_log(tmp_path / "resumed")] == [4, 8, 10]

    # control: the hook really draws from the global RNG, so without the restore the runs differ
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000010")
    third = Trainer(cfg, tmp_path / "resumed", resume=True, quiet=True)
    global_rng_noise(third)
    torch.manual_seed(99)
    third.train()
    a = load_file(str(resolve_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(resolve_checkpoint(tmp_path / "resumed") / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_second_ctrl_c_aborts_at_once_and_keeps_the_newest_checkpoint(tmp_path):
    def ctrl_c_twice(step, out):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    t = Trainer(tiny_config("train.steps=10", "train.checkpoint_every=2"), tmp_path / "run", quiet=True,
                on_step=ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000002"
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    assert moviola.load_model(tmp_path / "run") is not None


def test_resume_drops_log_rows_of_lost_work_and_a_torn_line(tmp_path):
    cfg = tiny_config("train.steps=4", "train.checkpoint_every=2")
    Trainer(cfg, tmp_path / "run", quiet=True).train(max_steps=3)  # checkpoint at 2, steps 1..3 logged
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.5')  # a process killed mid-write
    Trainer(cfg, tmp_path / "run", resume=True, quiet=True).train()
    Trainer(cfg, tmp_path / "straight", quiet=True).train()
    assert loss_log(tmp_path / "run") == loss_log(tmp_path / "straight")
    assert [r[0] for r in loss_log(tmp_path / "run")] == [1, 2, 3, 4]


# ------------------------------------------------------------------ crash inside a checkpoint write (in process)

def test_a_crash_inside_a_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    real = ckpt_mod.save_file
    calls = {"n": 0}

    def crash_on_second_checkpoint(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 files per checkpoint: the ema file of the 2nd one
            real(tensors, filename, *a, **k)
            Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # half written
            raise RuntimeError("simulated crash mid-write")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_on_second_checkpoint)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="mid-write"):
        Trainer(tiny_config("train.steps=6", "train.checkpoint_every=2"), run, quiet=True).train()
    ck = run / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["step_00000002"]  # the temp dir is gone, the old one intact
    moviola.load_model(run)
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    t = Trainer(load_config(run / "config.json"), run, resume=True, quiet=True)
    assert t.step == 2
    t.train()
    assert resolve_checkpoint(run).name == "step_00000006"


def test_leftovers_of_a_crashed_replace_or_prune_are_repaired_or_ignored(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=4", "train.checkpoint_every=2", "train.keep_last=1"), run, quiet=True).train()
    ck = run / "checkpoints"
    dead = subprocess.Popen(["true"])
    dead.wait()  # the pid of a writer that no longer runs
    # killed between the two renames that replace a checkpoint of the same step
    (ck / "step_00000004").rename(ck / f".old-step_00000004-{dead.pid}")
    # killed while pruning: a renamed, half-deleted old checkpoint
    shutil.copytree(ck / f".old-step_00000004-{dead.pid}", ck / f".del-step_00000002-{dead.pid}")
    (ck / f".del-step_00000002-{dead.pid}" / "model.safetensors").unlink()
    assert resolve_checkpoint(run).name == "step_00000004"  # moved back into place
    moviola.load_model(run)
    t = Trainer(load_config(run / "config.json", ["train.steps=5"]), run, resume=True, quiet=True)
    t.train()
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000005"]


# ------------------------------------------------------------------ safe loading

class CodePayload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    # control: the payload is real, unpickling it the unsafe way runs it
    pickle.loads(pickle.dumps(CodePayload(tmp_path / "control")))
    assert (tmp_path / "control").read_text() == "pwned"

    weights = {"blocks.0.weight": torch.ones(2, 2)}
    files = []
    for suffix in (".pt", ".pth", ".ckpt", ".bin"):
        path = tmp_path / f"evil{suffix}"
        torch.save({"ema": weights, "extra": CodePayload(marker)}, path)
        files.append(path)
    legacy = tmp_path / "legacy.pt"  # the pre-zip format, plain pickle bytes
    torch.save({"state_dict": weights, "x": CodePayload(marker)}, legacy, _use_new_zipfile_serialization=False)
    files.append(legacy)
    for path in files:
        with pytest.raises(CheckpointError, match="refused to unpickle") as e:
            load_foreign_state_dict(path)
        assert "weights_only=True" in str(e.value) and "safetensors" in str(e.value)
        assert "exec" in str(e.value)  # names what it refused
    assert not marker.exists()


def test_foreign_weights_are_unwrapped_preferring_ema(tmp_path):
    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    cases = {
        "both.pt": ({"model": a, "ema": b, "epoch": 3}, b),
        "model.pth": ({"model": a, "optimizer_step": 7}, a),
        "lightning.ckpt": ({"state_dict": a, "global_step": 10}, a),
        "nested.pt": ({"state_dict": {"ema": b}}, b),
        "plain.bin": (a, a),
    }
    for name, (obj, want) in cases.items():
        torch.save(obj, tmp_path / name)
        got = load_foreign_state_dict(tmp_path / name)
        assert got.keys() == want.keys() and torch.equal(got["w"], want["w"]), name
    save_file({"w": torch.full((3,), 2.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_foreign_state_dict(tmp_path / "w.safetensors")["w"], torch.full((3,), 2.0))

    torch.save({"w": torch.zeros(2), "lr": 0.1}, tmp_path / "mixed.pt")
    (tmp_path / "garbage.pt").write_bytes(b"definitely not a pickle")
    good = (tmp_path / "plain.bin").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{garbage")
    (tmp_path / "w.pkl").write_bytes(pickle.dumps(a))
    for name, needle in (("mixed.pt", "not named tensors"), ("garbage.pt", "not a plain tensor file"),
                         ("truncated.pt", "not a readable"), ("bad.safetensors", "not a readable"),
                         ("w.pkl", "unknown weights format"), ("missing.pt", "not found")):
        with pytest.raises(CheckpointError, match=needle):
            load_foreign_state_dict(tmp_path / name)


def test_own_checkpoints_are_checked_before_any_tensor_is_used(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2", "train.checkpoint_every=2"), run, quiet=True).train()
    ck = resolve_checkpoint(run)
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt") for p in ck.iterdir())

    # a resume whose config builds a different model: the CLI refuses the changed key (exit 2, one line)
    # before reading the checkpoint; given one anyway (the API), it is refused by shape
    code = main(["train", "--resume", "--run-dir", str(run), "--set", "model.hidden_size=64", "--quiet"])
    assert code == 2
    one_line_error(capsys.readouterr().err, "model.hidden_size (saved 32, now 64)")
    with pytest.raises(CheckpointError, match=r"wrong shape or dtype.*\(384, 64\)"):
        Trainer(tiny_config("train.steps=2", "model.hidden_size=64"), run, resume=True, quiet=True)

    # a dtype that cannot be a weight, and an optimizer state of the wrong shape
    sd = load_file(str(ck / "ema.safetensors"))
    key = next(iter(sd))
    save_file({**sd, key: sd[key].to(torch.int64)}, str(ck / "ema.safetensors"))
    with pytest.raises(CheckpointError, match="wrong shape or dtype"):
        moviola.load_model(run)
    with pytest.raises(CheckpointError, match="wrong shape or dtype"):
        Trainer(load_config(run / "config.json"), run, resume=True, quiet=True)
    save_file(sd, str(ck / "ema.safetensors"))
    opt = load_file(str(ck / "optimizer.safetensors"))
    okey = next(k for k in opt if k.endswith("exp_avg"))
    save_file({**opt, okey: torch.zeros(5, 5)}, str(ck / "optimizer.safetensors"))
    with pytest.raises(CheckpointError, match="optimizer state"):
        Trainer(load_config(run / "config.json"), run, resume=True, quiet=True)

    # a corrupt weights file: a clear error from the API and from the CLI
    (ck / "ema.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        moviola.load_model(run)
    code = main(["sample", str(run), "--out", str(tmp_path / "x.mp4"), "--quiet"])
    assert code == 2
    one_line_error(capsys.readouterr().err, "not a readable safetensors")
    save_file(sd, str(ck / "ema.safetensors"))
    save_file(opt, str(ck / "optimizer.safetensors"))
    (ck / "state.json").write_text("{torn")
    with pytest.raises(CheckpointError, match="state.json"):
        Trainer(load_config(run / "config.json"), run, resume=True, quiet=True)


# ------------------------------------------------------------------ numerical faults

def test_divergence_stops_with_the_last_good_checkpoint_intact_and_resumable(tmp_path, monkeypatch):
    real = trainer_mod.training_losses
    calls = {"n": 0}

    def nan_from_the_4th_step(*args, **kwargs):
        terms = real(*args, **kwargs)
        if calls["n"] >= 3:
            terms["loss"] = terms["loss"] * float("nan")
        calls["n"] += 1
        return terms

    monkeypatch.setattr(trainer_mod, "training_losses", nan_from_the_4th_step)
    run = tmp_path / "run"
    cfg = tiny_config("train.steps=10", "train.checkpoint_every=2", "train.max_bad_steps=3", "train.keep_last=5")
    t = Trainer(cfg, run, quiet=True)
    with pytest.raises(trainer_mod.TrainingDiverged, match="3 consecutive"):
        t.train()
    good = {k: v.clone() for k, v in t.model.state_dict().items()}  # weights after step 3, never touched since
    rows = metrics(run)
    assert [r["step"] for r in rows if "skipped_step" in r] == [4, 5, 6]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]
    newest = load_file(str(resolve_checkpoint(run) / "model.safetensors"))
    assert all(torch.equal(newest[k], good[k]) for k in good)  # the step-4 checkpoint holds step-3 weights
    assert json.loads((resolve_checkpoint(run) / "state.json").read_text())["bad_steps_total"] == 1

    monkeypatch.setattr(trainer_mod, "training_losses", real)  # the cause is fixed: resume continues
    t = Trainer(cfg, run, resume=True, quiet=True)
    assert t.step == 4 and t.bad_steps_run == 1
    t.train()
    assert resolve_checkpoint(run).name == "step_00000010"


# ------------------------------------------------------------------ disk faults

def failing_save_file(monkeypatch, fail_calls, short_write=False):
    """save_file fails (ENOSPC after writing part of the file) on the given 1-based calls."""
    real = ckpt_mod.save_file
    calls = {"n": 0}

    def patched(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] in fail_calls or "all" in fail_calls and calls["n"] > fail_calls["all"]:
            real(tensors, filename, *a, **k)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            if not short_write:  # a short write that reports success is caught by the size check
                raise OSError(errno.ENOSPC, "No space left on device", filename)
            return None
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", patched)


@pytest.mark.parametrize("short_write", [False, True])
def test_a_failed_checkpoint_write_warns_keeps_the_previous_and_retries(tmp_path, monkeypatch, capsys, short_write):
    cfg = tiny_config("train.steps=8", "train.checkpoint_every=2", "train.keep_last=2")
    Trainer(cfg, tmp_path / "straight", quiet=True).train()
    failing_save_file(monkeypatch, {4}, short_write)  # the ema file of the checkpoint at step 4
    run = tmp_path / "run"
    seen = []
    t = Trainer(cfg, run, quiet=True, on_step=lambda s, o: seen.append(list_checkpoints(run / "checkpoints")))
    t.train()
    err = capsys.readouterr().err
    assert "moviola: warning: checkpoint at step 4 not written" in err and "step_00000002 is intact" not in err
    assert "the newest valid checkpoint is" in err and "step_00000002" in err and "retries" in err
    assert [p.name for p in seen[4]] == ["step_00000002"]  # at step 5 only the step-2 checkpoint exists
    failed = [r for r in metrics(run) if "checkpoint_failed" in r]
    assert len(failed) == 1 and failed[0]["step"] == 4 and failed[0]["failed_saves"] == 1
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000006", "step_00000008"]  # no temp dirs
    assert_same_checkpoint(resolve_checkpoint(tmp_path / "straight"), resolve_checkpoint(run))  # nothing lost


def test_repeated_write_failures_stop_cleanly_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps({
        "name": "disk", "model": {"patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2},
        "data": {"size": 32, "frames": 4, "count": 8},
        "train": {"steps": 10, "batch_size": 2, "checkpoint_every": 2, "device": "cpu", "max_failed_saves": 2,
                  "keep_last": 3}}))
    failing_save_file(monkeypatch, {"all": 3})  # the disk fills up after the first checkpoint
    run = tmp_path / "run"
    code = main(["train", str(cfg_path), "--run-dir", str(run), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    line = [x for x in err.strip().splitlines() if x.startswith("moviola: error:")]
    assert len(line) == 1 and "Traceback" not in err
    assert "stopping at step 6" in line[0] and "2 checkpoints in a row" in line[0] and "step_00000002" in line[0]
    assert "--resume" in line[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    moviola.load_model(run)
    assert [r["step"] for r in metrics(run) if "checkpoint_failed" in r] == [4, 6]

    monkeypatch.setattr(ckpt_mod, "save_file", save_file)  # space freed
    assert main(["train", "--resume", "--run-dir", str(run), "--quiet"]) == 0
    Trainer(load_config(cfg_path), tmp_path / "straight", quiet=True).train()
    assert_same_checkpoint(resolve_checkpoint(tmp_path / "straight"), resolve_checkpoint(run))


def test_a_failed_final_checkpoint_stops_at_once(tmp_path, monkeypatch):
    failing_save_file(monkeypatch, {4})  # the model file of the final checkpoint (step 4)
    run = tmp_path / "run"
    t = Trainer(tiny_config("train.steps=4", "train.checkpoint_every=3"), run, quiet=True)
    with pytest.raises(CheckpointWriteFailed, match="the final checkpoint could not be written"):
        t.train()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]
    failing_save_file(monkeypatch, {"all": 0})
    with pytest.raises(CheckpointWriteError) as e:  # the checkpoint module's own error, an OSError
        ckpt_mod.save_checkpoint(run / "checkpoints", 9, {}, t.model, keep_last=2)
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]


# ------------------------------------------------------------------ hostile data

def gray_ramp(frames: int, h: int = 16, w: int = 16) -> np.ndarray:
    levels = (16 * np.arange(frames) + 8).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, h, w, 3)).copy()


def write_webm(path: Path, frames: int) -> None:
    """A webm header records no frame count, so a too-short webm is only found when it is read."""
    import av

    with av.open(str(path), "w", format="webm") as c:
        stream = c.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in gray_ramp(frames):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(stream.encode(None))


def hostile_video_folder(root: Path) -> Path:
    folder = write_shapes_folder(root, split="test", count=4, size=32, frames=8)
    good = (folder / "000000.mp4").read_bytes()
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (folder / "notes.mp4").write_text("this is not a video\n" * 20)
    (folder / "random.avi").write_bytes(os.urandom(4096))
    save_video(gray_ramp(2), folder / "short.mp4")  # 2 frames, a clip needs 4
    save_video(gray_ramp(2, 17, 23), folder / "short.gif")
    write_webm(folder / "short.webm", 2)  # passes the header probe, too short when read
    save_video(gray_ramp(6, 17, 23), folder / "odd.gif")  # odd sizes are fine
    save_video(gray_ramp(6, 33, 19), folder / "sub" / "odd.mp4")
    with open(folder / "captions.jsonl", "a") as f:
        f.write("{not json\n[1, 2]\n")
    return folder


def test_hostile_video_folder_items_are_skipped_and_counted(tmp_path):
    folder = hostile_video_folder(tmp_path / "v")
    ds = VideoFolder(folder, frames=4, size=32)
    assert dict(ds.skipped) == {"empty": 1, "unreadable": 3, "too_short": 2, "bad_caption_line": 2}
    assert len(ds) == 7  # 4 shapes clips, odd.gif, sub/odd.mp4, short.webm (too short, found on read)
    items = [ds[i] for i in range(len(ds))]
    assert all(it["video"].shape == (3, 4, 32, 32) and torch.isfinite(it["video"]).all() for it in items)
    assert ds.bad_items == {"short.webm": "too_short"} and ds.skipped["too_short"] == 3


def test_an_unreadable_caption_file_is_counted_not_fatal(tmp_path):
    save_video(gray_ramp(4), tmp_path / "a.mp4")
    (tmp_path / "captions.jsonl").mkdir()  # not a file
    with pytest.warns(UserWarning, match="cannot read caption file"):
        ds = VideoFolder(tmp_path, frames=4, size=16)
    assert dict(ds.skipped) == {"unreadable_caption_file": 1} and ds[0]["caption"] == ""
    (tmp_path / "captions.jsonl").rmdir()
    (tmp_path / "captions.jsonl").symlink_to(tmp_path / "missing.jsonl")  # a dangling link
    with pytest.warns(UserWarning, match="cannot read caption file"):
        assert dict(VideoFolder(tmp_path, frames=4, size=16).skipped) == {"unreadable_caption_file": 1}
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")  # not UTF-8, not JSON
    assert dict(VideoFolder(tmp_path, frames=4, size=16).skipped) == {"bad_caption_line": 1}


def test_hostile_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (17, 23, 3), dtype=np.uint8)).save(tmp_path / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (5, 5), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    png = (tmp_path / "a.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "noise", "label": 3}\nnope\n')
    ds = ImageFolder(tmp_path, size=32)
    assert dict(ds.skipped) == {"empty": 1, "unreadable": 2, "bad_caption_line": 1}
    assert [p.name for p in ds.files] == ["a.png", "gray.png", "odd.jpg"]
    items = [ds[i] for i in range(len(ds))]
    assert all(it["video"].shape == (3, 1, 32, 32) and it["video"].abs().max() <= 1 for it in items)
    assert items[0]["caption"] == "noise" and int(items[0]["label"]) == 3
    lazy = ImageFolder(tmp_path, size=16, probe=False)  # corrupt files found on read, replaced by the next
    assert all(lazy[i]["video"].shape == (3, 1, 16, 16) for i in range(len(lazy)))
    assert set(lazy.bad_items) == {"text.png", "truncated.png"}
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.png").write_text("no")
    with pytest.raises(ValueError, match="no usable image"):
        ImageFolder(tmp_path / "only")


def folder_yaml(tmp_path: Path, root: Path, workers: int, steps: int = 6) -> Path:
    path = tmp_path / f"folder-{workers}.yaml"
    path.write_text(json.dumps({
        "name": "folder", "model": {"patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2},
        "data": {"dataset": "folder", "root": str(root), "size": 32, "frames": 4, "num_workers": workers},
        "train": {"steps": steps, "batch_size": 2, "log_every": 1, "checkpoint_every": 3, "device": "cpu"}}))
    return path


def test_training_on_a_hostile_folder_reports_skips_also_from_workers(tmp_path, capsys):
    folder = hostile_video_folder(tmp_path / "v")
    for workers in (0, 2):
        run = tmp_path / f"run{workers}"
        assert main(["train", str(folder_yaml(tmp_path, folder, workers)), "--run-dir", str(run)]) == 0
        out = capsys.readouterr().out
        assert "data: skipped 8 unusable items" in out  # the summary at the start
        rows = [r for r in metrics(run) if "data_skipped" in r]
        assert rows[0] == {"step": 0, "data_skipped": {"empty": 1, "unreadable": 3, "too_short": 2,
                                                      "bad_caption_line": 2}}
        # short.webm is found too short on read (in a worker for workers=2) and reported back once
        assert rows[-1]["data_skipped"]["too_short"] == 3 and len(rows) == 2
        assert json.loads((resolve_checkpoint(run) / "state.json").read_text())["data_bad"] == {"short.webm": "too_short"}
    # worker loading gives the same batches: the same weights, bit for bit
    assert_same_checkpoint(resolve_checkpoint(tmp_path / "run0"), resolve_checkpoint(tmp_path / "run2"))


def test_a_folder_with_no_usable_item_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("no video")
    run = tmp_path / "runs" / "r"
    assert main(["train", str(folder_yaml(tmp_path, bad, 0)), "--run-dir", str(run), "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "no usable video", "'empty': 1", "'unreadable': 1")
    assert not (tmp_path / "runs").exists()
    # every file passes the header probe but none can be read: found in the workers, still one clear line
    lazy = tmp_path / "lazy"
    lazy.mkdir()
    for i in range(3):
        write_webm(lazy / f"{i}.webm", 2)
    assert main(["train", str(folder_yaml(tmp_path, lazy, 2)), "--run-dir", str(run), "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "no readable video left", "too_short")
    assert not (tmp_path / "runs").exists()  # no half-made run directory
