"""Data-parallel training (train.parallel=ddp, training/distributed.py): 2 CPU processes (gloo) agree
with one process that reads and draws the same global batch; only rank 0 writes the run directory;
gradient accumulation equals the doubled batch with the same draws; a ddp config outside torchrun is
a one-line error."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from moviola.config import ConfigError, load_config
from moviola.io.checkpoint import load_weights, resolve_checkpoint
from moviola.training.trainer import Draws, Trainer, split_batch

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
    "model.num_heads=2", "data.size=32", "data.frames=4", "data.count=8", "train.batch_size=2",
    "train.lr=1e-3", "train.device=cpu", "train.precision=fp32", "train.log_every=1", "train.steps=3",
    "train.checkpoint_every=1000", "sample.steps=4", "conditions.num_classes=48", "train.grad_clip=0.05",
]
# float sums in another order (DDP's gradient average, accumulation's sum of halves vs one mean) after 3 AdamW steps
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, overrides: list[str], tmp: str, resume_at: int = 0) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from moviola.training import distributed

    if resume_at:  # train to step resume_at (a checkpoint there), then resume in a new trainer (one directory)
        run = Path(tmp) / "run"
        Trainer(load_config(overrides=overrides), run, quiet=True).train(max_steps=resume_at)
        trainer = Trainer(load_config(overrides=overrides), run, resume=True, quiet=True)
    else:  # rank 1 is told another directory: it must not write it
        trainer = Trainer(load_config(overrides=overrides), Path(tmp) / ("run" if rank == 0 else f"run_rank{rank}"),
                          quiet=True)
    trainer.train()
    # the test's own record of this rank's weights (outside any run directory)
    torch.save({"model": trainer.task.raw_model.state_dict(), "ema": trainer.ema.model.state_dict()},
               Path(tmp) / f"weights{rank}.pt")
    distributed.destroy(wait=True)


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_weights(resolve_checkpoint(run), name)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _close(a: dict, b: dict, atol: float = ATOL) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max |diff| {worst:.3g} > {atol}"
    return worst


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), [*TINY, "train.parallel=ddp"], str(tmp)), nprocs=2, join=True)
    return tmp


@pytest.fixture(scope="module")
def accum_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("accum") / "run"
    Trainer(load_config(overrides=[*TINY, "train.grad_accum=2"]), run, quiet=True).train()
    return run


def test_ddp_equals_one_process_reading_the_same_global_batch(ddp_run, accum_run):
    """(a) 2 processes × batch 2 == 1 process × 2 micro-batches of 2: the same items and draws (shard s =
    rank·grad_accum + micro), so the same weights, EMA and logged (all-reduced) losses within ATOL."""
    ranks = [torch.load(ddp_run / f"weights{r}.pt") for r in (0, 1)]
    for name in ("model", "ema"):  # the ranks hold the same weights, bit for bit
        _close(ranks[0][name], ranks[1][name], atol=0.0)
    for name in ("model", "ema"):
        _close(_weights(ddp_run / "run", name), _weights(accum_run, name))
        _close(ranks[0][name], _weights(ddp_run / "run", name), atol=0.0)
    ddp, one = _losses(ddp_run / "run"), _losses(accum_run)
    assert len(ddp) == len(one) == 3
    assert ddp == pytest.approx(one, abs=1e-6)


def test_only_rank_0_writes(ddp_run):
    """(b) rank 0's run directory has the config, metrics and the checkpoint; rank 1's was never created."""
    run = ddp_run / "run"
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_00000003"]
    assert not (ddp_run / "run_rank1").exists()
    assert json.loads((run / "config.json").read_text())["train"]["parallel"] == "ddp"


def test_ddp_resume_is_exact(ddp_run, tmp_path):
    """A 2-process run checkpointed at step 2 and resumed (2 processes) ends with the uninterrupted run's
    weights and EMA bit for bit; resuming it in one process is refused (the shards' draws would change)."""
    mp.spawn(_worker, args=(2, _free_port(), [*TINY, "train.parallel=ddp", "train.checkpoint_every=2"],
                            str(tmp_path), 2), nprocs=2, join=True)
    for name in ("model", "ema"):
        _close(_weights(tmp_path / "run", name), _weights(ddp_run / "run", name), atol=0.0)
    with pytest.raises(ConfigError, match="2 process"):
        Trainer(load_config(overrides=[*TINY, "train.checkpoint_every=2"]), tmp_path / "run", resume=True, quiet=True)


def _cat_draws(parts):
    """Micro-batches' (x0, cond, t, noise, draws) joined into one batch."""
    x0, conds, ts, noises, draws = zip(*parts)
    cond = conds[0]
    for name in cond.present():
        setattr(cond, name, torch.cat([getattr(c, name) for c in conds]))
    return (torch.cat(x0), cond, torch.cat(ts), torch.cat(noises),
            Draws(torch.cat([d.labels_kept for d in draws]), None, None))


def test_grad_accum_equals_the_doubled_batch(tmp_path, accum_run):
    """(c) grad_accum=2 × batch 2 == one step on batch 4 with the same draws (its halves drawn as shards 0
    and 1): the same weights and EMA within ATOL."""
    ref = Trainer(load_config(overrides=[*TINY, "train.batch_size=4"]), tmp_path / "ref", quiet=True)
    make = ref.task.make_batch
    ref.task.make_batch = lambda step, batch=None, micro=0: _cat_draws(
        [make(step, half, s) for s, half in enumerate(split_batch(batch, 2))])
    ref.train()
    for name in ("model", "ema"):
        _close(_weights(tmp_path / "ref", name), _weights(accum_run, name))
    assert _losses(tmp_path / "ref") == pytest.approx(_losses(accum_run), abs=1e-6)


def test_ddp_without_torchrun_is_a_config_error(tmp_path, monkeypatch):
    """(d) train.parallel=ddp outside torchrun: a ConfigError, one line from the CLI, nothing written."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(load_config(overrides=[*TINY, "train.parallel=ddp"]), tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match="grad_accum"):
        Trainer(load_config(overrides=[*TINY, "train.grad_accum=0"]), tmp_path / "run", quiet=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "moviola", "train", "configs/shapes/latte-tiny.yaml", "--run-dir", str(tmp_path / "cli"),
                        *(x for o in TINY for x in ("--set", o)), "--set", "train.parallel=ddp"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "torchrun" in r.stderr, r.stderr
    assert not (tmp_path / "cli").exists()


def test_nproc_runs_torchrun():
    from moviola.cli.train import nproc_command

    cmd = nproc_command(["train", "c.yaml", "--nproc", "2", "--steps", "5"], 2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "moviola",
                       "train", "c.yaml", "--steps", "5", "--set", "train.parallel=ddp"]


def test_nproc_end_to_end(tmp_path):
    """moviola train --nproc 2 runs torchrun: two processes train, rank 0 reports and writes the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "moviola", "train", "configs/shapes/latte-tiny.yaml", "--nproc", "2",
                        "--run-dir", str(tmp_path / "run"), "--quiet",
                        *(x for o in [*TINY, "train.steps=2"] for x in ("--set", o))],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 2  # one report: rank 0's
    assert len(r.stdout.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["parallel"] == "ddp"
