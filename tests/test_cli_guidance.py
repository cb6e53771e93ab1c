"""What a new user meets on the command line (issue 14, items 8-11): a checkpoint of the wrong kind says
what it is and which command takes it; long commands show a progress bar; every error about a file names
the file and nothing is left behind; ``--help`` shows defaults, ``--version`` works, a single-value flag
given twice is refused."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import moviola
from moviola.cli import build_parser, main
from moviola.cli import sample as sample_cli
from moviola.io import checkpoint as checkpoint_io
from moviola.io.checkpoint import CheckpointError, write_new_directory

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_VAES = {"shapes-causal-vae-32": "CausalVAE", "shapes-frame-vae-32": "AutoencoderKL",
                "shapes-temporal-decoder-32": "TemporalDecoderVAE"}

TINY_YAML = """\
name: guidance-tiny
model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
conditions: {num_classes: 48}
data: {size: 32, frames: 4, count: 8}
train: {steps: 2, batch_size: 2, lr: 1e-3, log_every: 1, checkpoint_every: 2, device: cpu, precision: fp32}
sample: {steps: 1, cfg: 2.0}
"""

VAE_SETS = ["name=vae", "autoencoder.kind=causal_vae", "autoencoder.base_channels=8", "autoencoder.channel_mults=[1,2]",
            "autoencoder.num_res_blocks=1", "autoencoder.latent_channels=4", "autoencoder.norm_groups=4",
            "autoencoder.temporal_downsample=[true]", "autoencoder.chunk_frames=4", "data.size=32", "data.frames=5",
            "data.count=4", "train.batch_size=2", "train.device=cpu", "train.precision=fp32", "train.steps=1",
            "train.checkpoint_every=1", "vae.latent_stats_batches=1"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors, --help, --version
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> str:
    lines = [line.split("\r")[-1] for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("moviola: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], (n, err)
    return errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny class-conditional diffusion run."""
    tmp = tmp_path_factory.mktemp("guidance")
    (tmp / "cfg.yaml").write_text(TINY_YAML)
    assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    """A tiny train-vae run (a causal VAE, one step)."""
    tmp = tmp_path_factory.mktemp("guidance-vae")
    argv = ["train-vae", str(ROOT / "configs/shapes/causal-vae-32.yaml"), "--run-dir", str(tmp / "vrun"), "--quiet"]
    for item in VAE_SETS:
        argv += ["--set", item]
    assert main(argv) == 0
    return tmp / "vrun"


@pytest.fixture()
def afile(tmp_path) -> Path:
    """A plain file where a directory would be needed."""
    path = tmp_path / "afile"
    path.write_text("not a directory\n")
    return path


# ------------------------------------------------------------------ 8: a checkpoint of the wrong kind

@pytest.mark.parametrize("name", sorted(SHIPPED_VAES))
@pytest.mark.parametrize("command", ["sample", "export", "convert to-diffusers"])
def test_a_shipped_vae_given_as_a_diffusion_model_says_what_it_is(name, command, tmp_path, capsys):
    path = ROOT / "checkpoints" / name
    extra = ["--out", tmp_path / "x.png"] if command == "sample" else [tmp_path / "out"]
    code, _, err = run_cli(capsys, *command.split(), path, *extra)
    assert code == 2
    assert_one_line_error(err, str(path), f"is an autoencoder ({SHIPPED_VAES[name]})", "autoencoder.path",
                          "eval-vae")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", ["sample", "convert to-diffusers", "eval shapes --checkpoint"])
def test_a_train_vae_run_given_as_a_diffusion_model_says_what_it_is(vae_run, command, tmp_path, capsys):
    extra = ["--out", tmp_path / "x.png"] if command == "sample" else [] if "eval" in command else [tmp_path / "o"]
    code, _, err = run_cli(capsys, *command.split(), vae_run, *extra)
    assert code == 2
    assert_one_line_error(err, f"{vae_run} is a train-vae run", "causal_vae", f"moviola export {vae_run}",
                          f"moviola eval-vae {vae_run}")


def test_the_python_api_says_the_same(vae_run):
    with pytest.raises(CheckpointError, match=r"is a train-vae run .* not a diffusion model"):
        moviola.load_pipeline(vae_run, device="cpu")
    with pytest.raises(CheckpointError, match=r"is a train-vae run"):
        moviola.load_model(vae_run)
    with pytest.raises(CheckpointError, match=r"is an autoencoder \(CausalVAE\)"):
        moviola.load_pipeline(ROOT / "checkpoints" / "shapes-causal-vae-32", device="cpu")


def test_a_moviola_checkpoint_given_to_convert_diffusers_latte(run, vae_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "convert", "diffusers-latte", run, tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, f"{run} is a moviola diffusion checkpoint", "not a diffusers LatteTransformer3DModel",
                          "convert to-diffusers")
    code, _, err = run_cli(capsys, "convert", "diffusers-latte", vae_run, tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "is a train-vae run", "not a diffusers LatteTransformer3DModel")
    code, _, err = run_cli(capsys, "convert", "diffusers-latte", ROOT / "checkpoints" / "shapes-causal-vae-32",
                           tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "is an autoencoder (CausalVAE)", "not a diffusers LatteTransformer3DModel")


def test_a_diffusers_transformer_given_to_sample_or_eval_vae_says_convert_it(tmp_path, capsys):
    latte = tmp_path / "latte"
    latte.mkdir()
    (latte / "config.json").write_text(json.dumps({"_class_name": "LatteTransformer3DModel"}))
    code, _, err = run_cli(capsys, "sample", latte, "--out", tmp_path / "x.png")
    assert code == 2
    assert_one_line_error(err, "is a diffusers LatteTransformer3DModel", f"moviola convert diffusers-latte {latte}")
    code, _, err = run_cli(capsys, "eval-vae", latte, "--shapes", "1")
    assert code == 2
    assert_one_line_error(err, "is a diffusers LatteTransformer3DModel, not an autoencoder")


def test_checkpoint_kind_of_each_kind(run, vae_run, tmp_path):
    checkpoint_kind = checkpoint_io.checkpoint_kind
    assert checkpoint_kind(run).kind == "diffusion"
    assert checkpoint_kind(run / "checkpoints").kind == "diffusion"
    assert checkpoint_kind(ROOT / "checkpoints" / "shapes-latte-tiny").kind == "diffusion"
    assert checkpoint_kind(vae_run) == type(checkpoint_kind(vae_run))("autoencoder_run", "causal_vae")
    for name, cls in SHIPPED_VAES.items():
        assert checkpoint_kind(ROOT / "checkpoints" / name) == type(checkpoint_kind(run))("autoencoder", cls)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "LattePipeline"}))
    assert checkpoint_kind(tmp_path / "pipe").kind == "diffusers_pipeline"
    (tmp_path / "f.txt").write_text("x")
    assert checkpoint_kind(tmp_path / "f.txt").kind == "file"
    assert checkpoint_kind(tmp_path / "nope").kind == "missing"
    (tmp_path / "empty").mkdir()
    assert checkpoint_kind(tmp_path / "empty").kind == "unknown"


def test_eval_vae_still_takes_every_kind_of_autoencoder(vae_run, capsys):
    for path in (vae_run, ROOT / "checkpoints" / "shapes-causal-vae-32"):
        code, out, err = run_cli(capsys, "eval-vae", path, "--shapes", "1", "--frames", "5", "--size", "32",
                                 "--quiet")
        assert code == 0, err
        assert json.loads(out)["clips"] == 1


# ------------------------------------------------------------------ 9: progress bars

def test_sample_shows_one_bar_over_the_videos(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", run, "--num-videos", "3", "--out", tmp_path / "g.png")
    assert code == 0, err
    assert "videos: 100%" in err and "3/3" in err
    code, _, err = run_cli(capsys, "sample", run, "--num-videos", "3", "--out", tmp_path / "h.png", "--quiet")
    assert code == 0 and err == ""


def test_batched_sampling_gives_the_videos_of_one_call(run, monkeypatch):
    """The CLI's batches (for its bar) keep every video's seed and batch: the same videos as one pipeline call."""
    pipe = moviola.load_pipeline(run, device="cpu")
    monkeypatch.setattr(sample_cli, "BATCH", 2)
    args = argparse.Namespace(negative_prompt=None, image=None, num_videos=5, frames=None, size=None, steps=2,
                              sampler=None, cfg=None, eta=None, seed=7, quiet=True)
    labels = [3, 5, 7, 11, 13]
    batched = sample_cli.generate(pipe, args, labels, None)
    whole = pipe(labels=labels, steps=2, seed=7, batch_size=2)
    assert torch.equal(batched, whole)


def test_eval_shapes_shows_a_bar_over_the_videos(run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", "shapes", "--checkpoint", run, "--steps", "1")
    assert code == 0, err
    assert "eval shapes: 100%" in err and "48/48" in err
    assert "all" in json.loads(out)
    code, _, err = run_cli(capsys, "eval", "shapes", "--checkpoint", run, "--steps", "1", "--quiet")
    assert code == 0 and err == ""


def test_eval_shapes_of_a_folder_and_eval_vae_show_bars(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "clips"), "--count", "3", "--frames", "5"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "eval", "shapes", "--videos", tmp_path / "clips")
    assert code == 0 and "eval shapes: 100%" in err and "3/3" in err
    code, _, err = run_cli(capsys, "eval-vae", ROOT / "checkpoints" / "shapes-causal-vae-32", "--shapes", "2",
                           "--frames", "5", "--size", "32")
    assert code == 0 and "eval-vae: 100%" in err and "2/2" in err
    code, _, err = run_cli(capsys, "eval-vae", ROOT / "checkpoints" / "shapes-causal-vae-32", "--shapes", "2",
                           "--frames", "5", "--size", "32", "--quiet")
    assert code == 0 and err == ""


# ------------------------------------------------------------------ 10: paths in errors, nothing left behind

def test_a_config_that_is_not_text_names_the_file(tmp_path, capsys):
    png = tmp_path / "some.png"
    Image.new("RGB", (8, 8)).save(png)
    for command in ("train", "train-vae", "study"):
        code, _, err = run_cli(capsys, command, png)
        assert code == 2
        assert_one_line_error(err, str(png), "not a text file")
    code, _, err = run_cli(capsys, "train", tmp_path)
    assert code == 2
    assert_one_line_error(err, str(tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some.png"]


def test_outputs_under_a_file_are_refused_before_any_compute(run, afile, tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("loaded a checkpoint before checking the output")

    monkeypatch.setattr(moviola, "load_pipeline", no_load)
    cases = [("sample", run, "--out", afile / "x.mp4"), ("sample", run, "--out-dir", afile / "x"),
             ("sample", run, "--out-dir", afile), ("data", "shapes", "--out", afile / "x", "--count", "1"),
             ("export", run, afile / "x"), ("convert", "to-diffusers", run, afile / "x"),
             ("train", tmp_path / "cfg.yaml", "--run-dir", afile / "run"),
             ("eval", "shapes", "--checkpoint", run, "--json", afile / "r.json"),
             ("eval-vae", run, "--shapes", "1", "--json", afile / "r.json")]
    (tmp_path / "cfg.yaml").write_text(TINY_YAML)
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        line = assert_one_line_error(err, str(afile))
        assert ".tmp-" not in line, line  # the path the user named, not a temporary one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cfg.yaml"]


def test_a_report_in_a_missing_folder_is_refused_before_scoring(run, tmp_path, capsys, monkeypatch):
    import moviola.eval.shapes_eval

    monkeypatch.setattr(moviola.eval.shapes_eval, "evaluate_checkpoint",
                        lambda *a, **k: pytest.fail("scored before checking --json"))
    for flag in ("--json", "--csv"):
        code, _, err = run_cli(capsys, "eval", "shapes", "--checkpoint", run, flag, tmp_path / "nodir" / "r.txt")
        assert code == 2
        assert_one_line_error(err, f"{flag} {tmp_path / 'nodir' / 'r.txt'}", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_directory_is_refused(run, tmp_path, capsys):
    (tmp_path / "d.mp4").mkdir()
    code, _, err = run_cli(capsys, "sample", run, "--out", tmp_path / "d.mp4", "--quiet")
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "d.mp4"), "is a directory")


def test_an_unwritable_output_is_refused_naming_it(run, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real_access(p, mode, **k))
    for argv in (("sample", run, "--out", locked / "x.mp4", "--quiet"), ("export", run, locked / "out"),
                 ("data", "shapes", "--out", locked / "clips", "--count", "1")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert_one_line_error(err, str(locked), "not writable")
    assert not any(locked.iterdir())


def test_a_write_that_fails_names_the_file(run, tmp_path, capsys, monkeypatch):
    import moviola.video

    def fail(*a, **k):
        raise FileNotFoundError(2, "No such file or directory")  # what a codec says, without a name

    monkeypatch.setattr(moviola.video, "save_video", fail)
    code, _, err = run_cli(capsys, "sample", run, "--out", tmp_path / "x.mp4", "--quiet")
    assert code == 2
    assert_one_line_error(err, f"--out {tmp_path / 'x.mp4'}", "No such file or directory")
    code, _, err = run_cli(capsys, "sample", run, "--out-dir", tmp_path / "vids", "--quiet")
    assert code == 2
    assert_one_line_error(err, f"--out-dir {tmp_path / 'vids'}")


def test_a_failed_export_leaves_no_directory_behind(tmp_path):
    def write(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=str(tmp_path / "a" / "b" / "c")):
        write_new_directory(tmp_path / "a" / "b" / "c", write)
    assert list(tmp_path.iterdir()) == []


def test_eval_vae_takes_one_video_file(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "clips"), "--count", "2", "--frames", "5"]) == 0
    capsys.readouterr()
    one = tmp_path / "clips" / "000001.mp4"
    code, out, err = run_cli(capsys, "eval-vae", ROOT / "checkpoints" / "shapes-causal-vae-32", "--videos", one,
                             "--frames", "5", "--size", "32", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["clips"] == 1 and [r["clip"] for r in result["per_clip"]] == ["000001.mp4"]
    code, _, err = run_cli(capsys, "eval-vae", ROOT / "checkpoints" / "shapes-causal-vae-32", "--videos", one,
                           "--frames", "9", "--size", "32", "--quiet")
    assert code == 2
    assert_one_line_error(err, str(one), "fewer frames")
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = run_cli(capsys, "eval-vae", ROOT / "checkpoints" / "shapes-causal-vae-32", "--videos",
                           tmp_path / "notes.txt", "--frames", "5", "--size", "32")
    assert code == 2
    assert_one_line_error(err, str(tmp_path / "notes.txt"), "not a video file")


# ------------------------------------------------------------------ 11: --help, --version, repeated flags

def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def test_help_shows_every_default():
    for sub in _subparsers(build_parser()):
        text = " ".join(sub.format_help().split())
        assert "default: None" not in text and "default: False" not in text, sub.prog
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                helped = " ".join((action.help % {"default": action.default, "prog": sub.prog}
                                   if action.help else "").split())
                shown = f"default: {action.default}" in text or "default" in helped.lower()
                assert shown, f"{sub.prog} {action.option_strings[0]}: default {action.default!r} not shown"


def test_help_reads_well(capsys):
    code, out, _ = run_cli(capsys, "sample", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "frame rate of the written files (default: 8)" in text
    assert "videos per label or prompt (or in all, without them; default: 1)" in text
    code, out, _ = run_cli(capsys, "eval", "shapes", "--help")
    assert "sampling steps (default: 50)" in " ".join(out.split())


def test_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"moviola {moviola.__version__}" and err == ""


@pytest.mark.parametrize("argv,flag", [
    (["sample", "ckpt", "--steps", "5", "--steps", "10", "--out", "x.png"], "--steps"),
    (["sample", "ckpt", "--out", "a.png", "--out", "b.png"], "--out"),
    (["train", "c.yaml", "--run-dir", "a", "--run-dir", "b"], "--run-dir"),
    (["eval", "shapes", "--per-class", "2", "--per-class=3"], "--per-class"),
    (["data", "shapes", "--out", "a", "--size", "32", "--size", "64"], "--size"),
])
def test_a_single_value_flag_given_twice_is_refused(argv, flag, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"{flag} given twice")


def test_repeatable_flags_stay_repeatable():
    args = build_parser().parse_args(["sample", "ckpt", "--label", "1", "--label", "2", "--out", "x.png"])
    assert args.label == [1, 2]
    args = build_parser().parse_args(["sample", "ckpt", "--prompt", "a", "--prompt", "b", "--out", "x.png"])
    assert args.prompt == ["a", "b"]
    args = build_parser().parse_args(["train", "c.yaml", "--set", "a=1", "--set", "b=2", "--quiet", "--quiet"])
    assert args.set == ["a=1", "b=2"] and args.quiet
    # one parse does not leak into the next
    parser = build_parser()
    for _ in range(2):
        assert parser.parse_args(["sample", "ckpt", "--steps", "5", "--out", "x.png"]).steps == 5


def test_eval_shapes_samples_the_frames_and_palette_it_is_asked_for(run, capsys, monkeypatch):
    """--frames: the videos are that long (length generalization) and the settings say so; --palette: the
    scorer reads colours against it (the given words recoloured); both are refused for a folder of files."""
    from moviola.eval import shapes_eval

    seen = {}
    real = shapes_eval.summarize

    def spy(videos, targets, palette=None):
        seen.update(frames=videos[0].shape[1], palette=palette)
        return real(videos, targets, palette)

    monkeypatch.setattr(shapes_eval, "summarize", spy)
    code, out, err = run_cli(capsys, "eval", "shapes", "--checkpoint", run, "--steps", "1", "--frames", "6",
                             "--palette", "red=240,220,50", "--quiet")
    assert code == 0, err
    assert seen == {"frames": 6, "palette": {"red": (240, 220, 50)}}
    assert json.loads(out)["settings"]["frames"] == 6
    for extra in (["--frames", "0"], ["--palette", "pink=1,2,3"]):
        code, _, err = run_cli(capsys, "eval", "shapes", "--checkpoint", run, "--steps", "1", *extra)
        assert code == 2 and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "eval", "shapes", "--videos", run, "--frames", "6")
    assert code == 2 and "--frames" in err
