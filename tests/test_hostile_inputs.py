"""Hostile configs and arguments, property-based (hypothesis): every invalid input ends in one line
``moviola: error: ...`` and exit code 2, never a traceback, and leaves nothing behind (no run
directory, no output file). Valid inputs that slip through are run (when cheap) and must succeed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import tempfile
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from moviola.cli import build_parser, main
from moviola.config import MODEL_CONFIGS, ConfigError, RunConfig, from_dict, load_config
from moviola.config.loader import MOVED_KEYS

BASE = {
    "name": "h",
    "model": {"size": "tiny", "patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2},
    "data": {"size": 32, "frames": 4, "count": 8},
    "train": {"steps": 1, "batch_size": 2, "device": "cpu", "checkpoint_every": 1, "log_every": 1},
    "sample": {"steps": 2},
}


def known_keys() -> dict[tuple[str, ...], typing.Any]:
    """Every config key and its annotation (the ``model:`` section's are those of every family's config)."""
    hints = typing.get_type_hints(RunConfig)
    keys = {}
    for f in dataclasses.fields(RunConfig):
        sections = list(MODEL_CONFIGS.values()) if f.name == "model" else [hints[f.name]]
        for section in sections:
            if dataclasses.is_dataclass(section):
                sub = typing.get_type_hints(section)
                keys.update({(f.name, g.name): sub[g.name] for g in dataclasses.fields(section)})
            else:
                keys[(f.name,)] = hints[f.name]
    return keys


def plausible(tp) -> st.SearchStrategy:
    """Values of the right type, mostly in range: they reach the checks past the type check."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[st.none() if a is type(None) else plausible(a) for a in args])
    if origin is tuple:
        return st.tuples(*[plausible(a) for a in args]).map(list)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 48, 64, -1])
    if tp is float:
        return st.sampled_from([0.0, 1e-4, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0, 2.0, -1.0])
    return st.sampled_from(["", "x", "cpu", "tiny"])


KEYS = known_keys()
# the keys of configs written before the conditions section (load_config migrates them): fuzzed too
OLD_KEYS = {tuple(old.split(".")): KEYS[tuple(new.split("."))] for old, new in MOVED_KEYS.items()}
OLD_KEYS[("model", "variant")] = typing.Literal[1, 2, 3, 4]
KEYS.update(OLD_KEYS)
ODD_KEYS = [("modle",), ("model", "hiden_size"), ("train", "lrr"), ("train", "steps", "x"), ("",), (7,),
            ("data", None), ("sample", "cfg", "deep", "er")]
CHOICES = ["latte", "tiny", "XL", "identity", "frame_vae", "shapes", "folder", "linear", "cosine", "eps", "v",
           "x0", "min_snr", "trailing", "constant", "fp16", "bf16", "fp32", "ddim", "ddpm", "cpu", "auto", "cuda",
           "cuda:7", "mps", "", "../..", "a/b"]

values = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, 1, 2, 3, 4, 7, 8, 16, 30, 32, 48, 64, 100, 2**31, 2**63, -2**63, 10**30]),
    st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-4, 0.5, 0.999, 1.0, 1.5, 1e300, float("nan"), float("inf")]),
    st.sampled_from(CHOICES), st.text(max_size=6),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(-2, 2), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def config_trees(draw):
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for _ in range(draw(st.integers(1, 3))):
        roll = draw(st.integers(0, 9))
        path = draw(st.sampled_from(ODD_KEYS) if roll == 0 else st.sampled_from(sorted(KEYS)))
        node = tree
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = draw(values if roll < 4 or path not in KEYS else plausible(KEYS[path]))
    if draw(st.integers(0, 20)) == 0:  # a whole section, or the whole file, of the wrong kind
        return draw(st.sampled_from([[1, 2], "text", 3, None, {"model": [1]}, {"train": "fast"}]))
    return tree


def cheap(cfg: RunConfig) -> bool:
    """Small enough to train one step in a test (valid configs are run, not just parsed)."""
    dims = cfg.model.dims()
    tokens = (cfg.data.size // cfg.model.patch_size) ** 2 * cfg.data.frames
    return (cfg.autoencoder.kind == "identity" and cfg.data.dataset == "shapes" and cfg.data.size <= 64
            and tokens * cfg.train.batch_size <= 4096 and dims.hidden_size <= 128 and dims.depth <= 4
            and cfg.diffusion.num_timesteps <= 5000 and cfg.data.count <= 10000 and cfg.train.sample_every == 0)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_clean_error(code, err: str, before: set[str], root: Path, progress: bool = False) -> None:
    """Exit 2, one ``moviola: error:`` line (after a progress bar, if one ran, and the note on renamed keys,
    if the config has old ones), nothing left behind."""
    lines = [line for line in err.strip().splitlines() if not RENAMED_NOTE.match(line)]
    if progress:  # tqdm's bar shares stderr: the error must still be one line, the last one
        lines = [line.split("\r")[-1] for line in lines if "moviola: error" in line]
        assert err.rstrip().split("\n")[-1].split("\r")[-1] in lines, err
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("moviola: error: "), err
    assert "Traceback" not in err
    assert snapshot(root) == before, "an error left files behind"


RENAMED_NOTE = re.compile(r"^moviola: note: .*: renamed config keys [^\n]* \(the old names still load; the new "
                          r"ones are what moviola writes\)$")


@contextlib.contextmanager
def sandbox():
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


@settings(max_examples=300, deadline=None)
@given(config_trees())
def test_any_config_tree_is_a_config_or_a_config_error(tree):
    try:
        from_dict(RunConfig, tree).validate()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_trees())
def test_hostile_configs_through_the_cli(tree):
    with sandbox() as root:
        (root / "cfg.yaml").write_text(yaml.safe_dump(tree))
        before = snapshot(root)
        try:
            cfg = load_config(root / "cfg.yaml")
        except ConfigError:
            code, _, err = run_main(["train", "cfg.yaml", "--quiet"])
            assert_clean_error(code, err, before, root)
            return
        assume(cheap(cfg))  # valid: run it for one step (the trainer has checks of its own)
        code, out, err = run_main(["train", "cfg.yaml", "--quiet", "--steps", "1"])
        if code == 2:
            assert_clean_error(code, err, before, root)
        else:
            assert code == 0, err
            assert (root / "runs" / cfg.name / "checkpoints" / "step_00000001").is_dir()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump({**BASE, "conditions": {"num_classes": 48}}))
    code, _, err = run_main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "run"), "--quiet"])
    assert code == 0, err
    bad = tmp / "bad.yaml"
    bad.write_text("train: {lrr: 1}\n")
    return tmp


FLAGS = ["--set", "--run-dir", "--resume", "--precision", "--steps", "--device", "--quiet", "--label",
         "--num-videos", "--sampler", "--cfg", "--eta", "--seed", "--frames", "--size", "--fps", "--out", "--out-dir",
         "--format", "--weights", "--count", "--split", "--bounce", "--checkpoint", "--videos", "--per-class",
         "--csv", "--json", "--bogus", "-x", "--"]
WORDS = ["train", "sample", "data", "shapes", "eval", "bogus", "-1", "0", "1", "2", "3", "7", "1e9", "nan", "-inf",
         "1.5", "2**40", "1099511627776", "", " ", "x.mp4", "x.gif", "x.avi", "out", "runs/x", "nope.yaml",
         "BAD_YAML", "CKPT", "CKPT/run", "cpu", "cuda", "mps", "ddim", "ddpm", "fp16", "bf16", "png", "ema", "test",
         "train.lr=fast", "train.steps=0", "model.depth=3", "a=b", "=", "data.size=31", "train.stepz=1"]
INTS = ["-1", "0", "1", "2", "3", "5", "31", "48", "1099511627776", "x", "", "1.5"]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "1", "1.5", "1e309", "x", ""]
PATHS = ["nope", "x.mp4", "x.gif", "x.avi", "x.png", "out", "CKPT/run", "CKPT", "", ".", "/dev/null", "nope/x.mp4"]
# (flag, its values) per command: mostly well-formed, so the checks behind argparse are reached
SPEC = {
    "train": [("--set", WORDS[-7:] + ["train.steps=1", "train.lr=1e-4"]), ("--run-dir", PATHS), ("--resume", None),
              ("--precision", ["fp32", "bf16", "fp16", "fp8"]), ("--steps", INTS), ("--device", WORDS[28:31] + ["cuda:9", "tpu", ""]),
              ("--quiet", None)],
    "sample": [("--label", INTS), ("--num-videos", INTS), ("--sampler", ["ddim", "ddpm", "euler"]), ("--steps", INTS),
               ("--cfg", FLOATS), ("--eta", FLOATS), ("--seed", INTS), ("--frames", INTS), ("--size", INTS),
               ("--fps", INTS), ("--out", PATHS), ("--out-dir", PATHS), ("--format", ["mp4", "gif", "png", "avi"]),
               ("--weights", ["ema", "model", "x"]), ("--device", ["cpu", "cuda", "mps", "x"]), ("--quiet", None)],
    "data shapes": [("--out", PATHS), ("--split", ["train", "test", "val"]), ("--count", INTS),
                    ("--size", ["32", "64", "33", "0"]), ("--frames", INTS), ("--seed", INTS), ("--bounce", None)],
    "eval shapes": [("--checkpoint", PATHS), ("--videos", PATHS), ("--per-class", INTS), ("--steps", INTS),
                    ("--cfg", FLOATS), ("--sampler", ["ddim", "x"]), ("--seed", INTS), ("--csv", PATHS), ("--json", PATHS)],
}
POSITIONAL = {"train": ["BAD_YAML", "nope.yaml", "CKPT", "", None], "sample": ["CKPT/run", "CKPT", "nope", "", "x.mp4"],
              "data shapes": [None], "eval shapes": [None]}


@st.composite
def structured_argv(draw):
    command = draw(st.sampled_from(sorted(SPEC)))
    argv = command.split()
    positional = draw(st.sampled_from(POSITIONAL[command]))
    if positional is not None:
        argv.append(positional)
    for flag, pool in draw(st.lists(st.sampled_from(SPEC[command]), max_size=5)):
        argv += [flag] if pool is None else [flag, draw(st.sampled_from(pool))]
    if command == "sample" and draw(st.booleans()):  # often a valid output, so the numbers are what is tested
        argv += ["--out", "x.gif", "--quiet"]
    return argv


def not_help(token: str) -> bool:
    return not (token.startswith("-h") or (len(token) >= 3 and "--help".startswith(token)))


argvs = st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(WORDS), st.text(max_size=5).filter(not_help)),
                 min_size=0, max_size=7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(argv=st.one_of(structured_argv(), argvs, argvs.map(lambda a: ["sample", "CKPT/run", *a])))
def test_hostile_arguments(tiny_checkpoint, argv):
    argv = [a.replace("CKPT", str(tiny_checkpoint)).replace("BAD_YAML", str(tiny_checkpoint / "bad.yaml"))
            for a in argv]
    try:  # skip the rare argv that is valid and expensive (many clips, or a whole evaluation)
        args = build_parser().parse_args(argv)
        assume(not (args.command == "data" and args.count > 2))
        assume(not (args.command == "eval" and args.checkpoint is not None and args.per_class > 0))
        assume(not (args.command == "sample" and (args.steps or 2) * args.num_videos * max(1, len(args.label or [])) > 64))
        assume(not (args.command == "train" and (args.steps or 0) > 3))
    except SystemExit:
        pass
    with sandbox() as root:
        before = snapshot(root)
        code, out, err = run_main(argv)
        assert "Traceback" not in err
        if code == 1 and "moviola: error: out of memory" in err:  # asked for too much: exit 1, one line
            code = 2
        if code != 0:
            assert_clean_error(code, err, before, root, progress="--quiet" not in argv)
