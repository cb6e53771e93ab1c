"""``train.precision: auto`` (the default): bf16 where the device runs it natively, fp32 elsewhere,
said at start-up and recorded in metrics.jsonl; an explicit bf16 without native support warns with
the measured cost. The detection is monkeypatched for both branches, so these tests do not depend
on this machine's CPU; one test checks the real detection against /proc/cpuinfo."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import moviola.utils as utils
from moviola.cli import main
from moviola.config import TrainConfig, load_config, yaml_load
from moviola.training import trainer as trainer_mod
from moviola.training.trainer import Trainer

TINY = ["name=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
        "data.size=32", "data.frames=4", "data.count=4", "train.batch_size=2", "train.lr=1e-3",
        "train.device=cpu", "train.log_every=1", "train.checkpoint_every=2"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def cpu_features(monkeypatch):
    """Pretend this CPU has the given bf16 features (none: AVX2-only, say)."""
    def pretend(*features: str) -> None:
        monkeypatch.setattr(utils, "cpu_bf16_features", lambda: tuple(features))
    return pretend


@pytest.fixture()
def autocasts(monkeypatch) -> list[str]:
    """The precision each diffusion training step autocasts to."""
    seen: list[str] = []
    real = trainer_mod.autocast
    monkeypatch.setattr(trainer_mod, "autocast", lambda device, precision: seen.append(precision) or
                        real(device, precision))
    return seen


def test_auto_is_the_default_and_no_shipped_config_forces_bf16():
    assert TrainConfig().precision == "auto"
    for path in sorted(CONFIGS.rglob("*.yaml")):
        train = (yaml_load(path.read_text()) or {}).get("train") or {}
        assert train.get("precision", "auto") in ("auto", "fp32"), path


@pytest.mark.parametrize("features,chosen", [(("AVX512_BF16",), "bf16"), (("AMX-BF16",), "bf16"), ((), "fp32")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(tmp_path, capsys, cpu_features, autocasts,
                                                             features, chosen):
    cpu_features(*features)
    run = tmp_path / "run"
    Trainer(load_config(overrides=[*TINY, "train.steps=2"]), run).train()
    assert autocasts == [chosen, chosen]  # what the steps really ran in
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("precision:")]
    assert len(said) == 1 and said[0].startswith(f"precision: {chosen} (auto: the CPU has")  # one line, and why
    assert (features[0] if features else "no AVX512_BF16 or AMX-BF16") in said[0]
    row = metrics(run)[0]
    assert row["step"] == 0 and row["precision"] == chosen and row["precision_reason"] in said[0]
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == "auto"  # decided per machine


def test_a_resumed_run_decides_again_on_its_machine(tmp_path, cpu_features, autocasts):
    run = tmp_path / "run"
    cpu_features("AVX512_BF16")
    Trainer(load_config(overrides=[*TINY, "train.steps=4"]), run, quiet=True).train(max_steps=2)
    cpu_features()  # moved to a CPU without native bf16
    Trainer(load_config(run / "config.json"), run, resume=True, quiet=True).train()
    assert autocasts == ["bf16", "bf16", "fp32", "fp32"]
    rows = [(r["step"], r["precision"]) for r in metrics(run) if "precision" in r]
    assert rows == [(0, "bf16"), (2, "fp32")]


def test_explicit_bf16_without_native_support_warns_with_the_measured_cost(tmp_path, capsys, cpu_features,
                                                                          autocasts):
    cpu_features()
    with pytest.warns(UserWarning, match=r"train\.precision=bf16, but the CPU has no AVX512_BF16") as record:
        Trainer(load_config(overrides=[*TINY, "train.steps=1", "train.precision=bf16"]), tmp_path / "a",
                quiet=True).train()
    assert autocasts == ["bf16"]  # explicit: used as asked
    ratio = float(re.search(r"took ([0-9.]+)× the time of fp32", str(record[0].message)).group(1))
    assert math.isfinite(ratio) and ratio > 0
    assert not any("precision" in r for r in metrics(tmp_path / "a"))  # no decision made, none recorded
    # on the command line: one warning line, and the run goes on
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({"model": {"patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2},
                               "data": {"count": 4, "frames": 4},
                               "train": {"steps": 1, "batch_size": 2, "device": "cpu", "precision": "bf16"}}))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "b"), "--quiet"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("moviola: warning:")]
    assert len(warned) == 1 and "× the time of fp32" in warned[0]


def test_explicit_bf16_with_native_support_does_not_warn(tmp_path, cpu_features, recwarn):
    cpu_features("AVX512_BF16")
    Trainer(load_config(overrides=[*TINY, "train.steps=1", "train.precision=bf16"]), tmp_path / "r", quiet=True)
    assert not [w for w in recwarn if "precision" in str(w.message)]


def test_other_devices(monkeypatch):
    assert utils.resolve_precision("auto", torch.device("mps"))[0] == "fp32"
    assert utils.resolve_precision("fp32", "cpu") == ("fp32", "train.precision=fp32")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Some GPU")
    for capability, chosen in (((8, 0), "bf16"), ((7, 5), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i, c=capability: c)
        precision, why = utils.resolve_precision("auto", torch.device("cuda"))
        assert precision == chosen and f"compute capability {capability[0]}.{capability[1]}" in why


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_the_real_detection_agrees_with_proc_cpuinfo():
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    native, why = utils.native_bf16("cpu")
    assert native == bool(flags & {"avx512_bf16", "amx_bf16"}), (why, sorted(flags & {"avx512_bf16", "amx_bf16"}))
    assert why.startswith("the CPU has")
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None and "avx512_bf16" in caps():  # torch's CPUID probe sees the same feature
        assert bool(caps()["avx512_bf16"]) == ("avx512_bf16" in flags)
