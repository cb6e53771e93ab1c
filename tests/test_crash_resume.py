"""Real processes, real signals: ``moviola train`` is killed with SIGKILL at random moments (during
steps and during checkpoint writes), once mid-write on purpose, and stopped with Ctrl-C and
SIGTERM sent to its whole process group (DataLoader workers included). After every kill the newest
checkpoint must load, and the run, resumed each time, must end bit-identical (weights, EMA,
optimizer, loss log) to a run that was never interrupted: nothing lost.

``test_sigkills_and_ctrl_c_fast`` always runs (a forced mid-write SIGKILL, a random SIGKILL, a
Ctrl-C); ``test_random_sigkills_many`` is the ``--runslow`` version: 15 random SIGKILLs, the forced
mid-write one, a Ctrl-C and a SIGTERM. SIGTERM is also tested in process in test_reliability.py. Counts for docs/reliability.md are printed with
``pytest -s``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import moviola
from moviola.config import load_config
from moviola.io.checkpoint import list_checkpoints, resolve_checkpoint
from moviola.training.trainer import Trainer

CONFIG = """\
name: crash
model: {{size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}}
conditions: {{num_classes: 48}}
data: {{size: 32, frames: 4, count: 8}}
train: {{steps: {steps}, batch_size: 2, lr: 1e-3, log_every: 3, checkpoint_every: 1, keep_last: 2,
        device: cpu, precision: fp32, warmup_steps: 5, lr_schedule: cosine}}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "STEP_SLEEP": "0.05"}
LOSS_KEYS = ("step", "loss", "grad_norm", "lr", "mse", "bad_steps_total")

# Runs the CLI with safetensors' writer replaced by one that, on the Nth file, writes half of it and
# then SIGKILLs its own process: a kill in the middle of a checkpoint write, at a known moment.
DIE_MID_WRITE = """\
import os, signal, sys
from pathlib import Path
import moviola.io.checkpoint as ck
real, calls, die_at = ck.save_file, [0], int(os.environ["DIE_AT_SAVE_FILE_CALL"])
def save_file(tensors, filename, *a, **k):
    calls[0] += 1
    real(tensors, filename, *a, **k)
    if calls[0] == die_at:
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = save_file
from moviola.cli import main
sys.exit(main(sys.argv[1:]))
"""


# Runs the CLI with every training step taking at least STEP_SLEEP seconds more. The tiny model
# trains at ~50 steps/s on an idle machine, fast enough to finish before a signal can land; the
# pause paces the run without touching its math (the results stay bit-identical).
PACED = """\
import os, sys, time
import moviola.training.trainer as tr
real = tr.Trainer.train_step
def train_step(self, *args, **kwargs):
    time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
    return real(self, *args, **kwargs)
tr.Trainer.train_step = train_step
from moviola.cli import main
sys.exit(main(sys.argv[1:]))
"""


def newest_step(run: Path) -> int:
    ckpts = list_checkpoints(run / "checkpoints")
    return int(ckpts[-1].name.split("_")[1]) if ckpts else 0


def check_loadable(run: Path) -> Path:
    """The newest checkpoint parses (safetensors, JSON) and rebuilds its model."""
    ck = resolve_checkpoint(run)
    for name in ("model", "ema", "optimizer"):
        tensors = load_file(str(ck / f"{name}.safetensors"))
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == int(ck.name.split("_")[1])
    json.loads((ck / "config.json").read_text())
    moviola.load_model(run)
    return ck


def loss_log(run: Path) -> list[tuple]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line torn by a kill (a resume drops it)
            pass
    return [tuple(r.get(k) for k in LOSS_KEYS) for r in rows if "loss" in r]


def start(run: Path, cfg: Path, *extra: str, wrapper: bool = False, env: dict | None = None) -> subprocess.Popen:
    resume = bool(list_checkpoints(run / "checkpoints"))  # killed before its first checkpoint: start over
    args = ["train", "--run-dir", str(run), "--quiet", *(["--resume"] if resume else [str(cfg)]), *extra]
    head = [sys.executable, "-c", DIE_MID_WRITE if wrapper else PACED]
    return subprocess.Popen(head + args, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as in a terminal


def wait_for_progress(proc: subprocess.Popen, run: Path, timeout: float = 120) -> bool:
    """Until this process has written a checkpoint of its own (training is under way)."""
    before, t0 = newest_step(run), time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if newest_step(run) > before:
            return True
        time.sleep(0.01)
    raise AssertionError("no progress")


def crash_and_resume(tmp: Path, kinds: list[str], steps: int, seed: int) -> dict:
    """Interrupt a run once per entry of ``kinds`` ("midwrite", "kill", "int", "term"), resume it
    each time, finish it, and compare with an uninterrupted run. Returns counts for the report."""
    rng = random.Random(seed)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(CONFIG.format(steps=steps))
    run = tmp / "run"
    stats = {"interruptions": 0, "sigkill_random": 0, "sigkill_mid_write_forced": 0,
             "sigkill_landed_mid_write": 0, "signals": 0, "steps_redone": 0}
    for kind in kinds:
        if kind == "midwrite":  # 3 files per checkpoint: die inside the 2nd file of this process's 3rd one
            proc = start(run, cfg, wrapper=True, env={**ENV, "DIE_AT_SAVE_FILE_CALL": "8"})
            proc.wait(timeout=120)
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
            leftovers = list((run / "checkpoints").glob(".tmp-step_*"))
            assert len(leftovers) == 1 and not (leftovers[0] / "state.json").exists()
            stats["sigkill_mid_write_forced"] += 1
        elif kind == "kill":
            proc = start(run, cfg)
            assert wait_for_progress(proc, run), "finished before the kill: raise steps"
            time.sleep(rng.uniform(0.0, 0.6))
            logged = max([r[0] for r in loss_log(run)] or [0])
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            stats["steps_redone"] += max(0, logged - newest_step(run))
            stats["sigkill_random"] += 1
            # the kill hit a checkpoint write if this process left its temp dir behind
            stats["sigkill_landed_mid_write"] += bool(list((run / "checkpoints").glob(f".tmp-step_*-{proc.pid}")))
        else:  # Ctrl-C / SIGTERM to the whole process group, with a DataLoader worker in it
            sig = signal.SIGINT if kind == "int" else signal.SIGTERM
            proc = start(run, cfg, "--set", "data.num_workers=1")
            assert wait_for_progress(proc, run)
            time.sleep(rng.uniform(0.0, 0.3))
            os.killpg(proc.pid, sig)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 128 + sig, err
            assert "Traceback" not in err and f"stopped by {sig.name} at step" in err, err
            stopped = int(err.split("at step ")[1].split(";")[0])
            assert newest_step(run) == stopped  # the final checkpoint is the step it stopped at
            assert json.loads(out.strip().splitlines()[-1])["run_dir"] == str(run)
            stats["signals"] += 1
        stats["interruptions"] += 1
        check_loadable(run)
    proc = start(run, cfg)  # the last resume runs to the end
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not list((run / "checkpoints").glob(".*")), "temp dirs of crashed writers are swept"

    straight = tmp / "straight"
    Trainer(load_config(cfg), straight, quiet=True).train()
    a, b = resolve_checkpoint(straight), resolve_checkpoint(run)
    assert a.name == b.name == f"step_{steps:08d}"
    for name in ("model", "ema", "optimizer"):
        ta, tb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    assert sa["optimizer"] == sb["optimizer"] and sa["ema_updates"] == sb["ema_updates"] == steps
    assert loss_log(straight) == loss_log(run)  # the log reads as one run: no gaps, no duplicates
    print(f"\ncrash_and_resume({kinds}): {stats}")
    return stats


def test_sigkills_and_ctrl_c_fast(tmp_path):
    stats = crash_and_resume(tmp_path, ["midwrite", "kill", "int"], steps=30, seed=0)
    assert stats["interruptions"] == 3 and stats["signals"] == 1


@pytest.mark.slow
def test_random_sigkills_many(tmp_path):
    kinds = ["midwrite"] + ["kill"] * 8 + ["int"] + ["kill"] * 7 + ["term"]
    stats = crash_and_resume(tmp_path, kinds, steps=250, seed=1)
    assert stats["sigkill_random"] == 15 and stats["signals"] == 2
