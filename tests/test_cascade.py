"""Interpolation (pipelines/interpolate.py), chunked upsampling (pipelines/upsample.py) and cascades
(pipelines/cascade.py, ``moviola sample CASCADE.yaml``, ``moviola sample CKPT --interpolate N --video IN``).

A cascade stage gets exactly the noise level it asks for; interpolation keeps every input frame exactly at
0, 4, 8, ..., makes 4T − 3 frames (16T − 15 over two levels, each level with its frame-rate flag); chunks cover
every frame once with their boundaries where the docstring puts them; base → SR → interpolation has the shape
the plan says and is a function of its seed; a cascade file's mistakes are one-line errors before any weights
load; the command line writes the final file. Tiny checkpoints are written in tmp_path (identity autoencoder).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import moviola
from moviola.cli import main
from moviola.config import ConfigError, load_config, save_config
from moviola.models.registry import build_model
from moviola.pipelines import cascade as cascade_mod
from moviola.pipelines.cascade import load_cascade, plan_cascade, run_cascade
from moviola.pipelines.interpolate import interpolate, keyframe_windows, window_seed
from moviola.pipelines.upsample import Chunk, frame_chunks, upsample
from moviola.video import read_video, save_video

UNET = ["model.family=video_ldm", "model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
        "model.norm_num_groups=8", "model.temporal_head_channels=8", "sample.steps=2", "train.device=cpu"]
WALT = ["model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2", "model.patch_size=4",
        "model.pos_grid=[4,16,16]", "sample.steps=2", "train.device=cpu"]
BASE = ["conditions.num_classes=48", "data.size=8", "data.frames=5"]  # class-conditional, 5 frames of 8×8
UPSAMPLER = ["conditions.low_res=true", "conditions.noise_level=true", "data.size=16", "data.frames=4",
             "sample.noise_level=77"]
INTERP = ["conditions.num_classes=48", "conditions.context_frames=true", "conditions.context_mode=keyframes",
          "conditions.fps=true", "data.frames=9", "data.frame_strides=[1,4]", "data.fps=8", "data.size=16"]


def write_checkpoint(path: Path, *overrides: str, family: list[str] = UNET) -> Path:
    """A checkpoint directory (config.json + model.safetensors) of a tiny model with live (perturbed) weights."""
    cfg = load_config(overrides=[*family, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, 3)
    with torch.no_grad():  # zero-initialized output layers would make every check trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path.mkdir(parents=True)
    save_config(cfg, path / "config.json")
    save_file(model.state_dict(), str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    return {"root": root,
            "base": write_checkpoint(root / "base", *BASE),
            "up": write_checkpoint(root / "up", *UPSAMPLER),  # 8×8 → 16×16, chunks of 4 frames
            "up32": write_checkpoint(root / "up32", *UPSAMPLER, "data.size=32"),  # 16×16 → 32×32
            "walt_up": write_checkpoint(root / "walt_up", *UPSAMPLER, "data.size=32", family=WALT),
            "interp": write_checkpoint(root / "interp", *INTERP),  # 9 frames: 3 keyframes a window
            "up_offset": write_checkpoint(root / "up_offset", *UPSAMPLER, "diffusion.steps_offset=1"),
            "up_scaled": write_checkpoint(root / "up_scaled", *UPSAMPLER, "diffusion.x0_scale.scale_b=0.7"),
            "plain": write_checkpoint(root / "plain", *BASE, "conditions.context_frames=true",
                                      "conditions.context_mode=prefix2", "data.size=16")}


class Spy:
    """Wraps a pipeline loader: every model call's Conditioning, per loaded checkpoint (in load order)."""

    def __init__(self):
        self.calls: list[tuple[str, list]] = []

    def __call__(self, path, **kwargs):
        pipe = moviola.load_pipeline(path, **kwargs)
        seen: list = []
        inner = pipe.model.forward
        pipe.model.forward = lambda x, t, cond=None, **kw: seen.append((x.shape, cond)) or inner(x, t, cond, **kw)
        self.calls.append((Path(path).name, seen))
        return pipe


def rand_video(n: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ (a) the noise level a stage asks for
def test_each_upsampling_stage_gets_exactly_its_noise_level(ckpts, monkeypatch):
    """The issue's test: two SR stages (a Video LDM U-Net and a W.A.L.T transformer) with their own levels, and
    one without a level (its checkpoint's sample.noise_level, 77): every model call of a stage sees its level."""
    spy = Spy()
    monkeypatch.setattr(cascade_mod, "load_pipeline", spy)
    spec = {"base": str(ckpts["base"]), "labels": [3, 40],
            "stages": [{"upsample": str(ckpts["up"]), "noise_level": 17},
                       {"upsample": str(ckpts["walt_up"]), "noise_level": 123}]}
    video = run_cascade(spec, seed=1)
    assert video.shape == (2, 3, 5, 32, 32)
    (_, base), (_, sr1), (_, sr2) = spy.calls
    assert all(cond.noise_level is None for _, cond in base)
    for calls, level in ((sr1, 17.0), (sr2, 123.0)):
        assert calls and all(set(cond.noise_level.tolist()) == {level} for _, cond in calls)
    spy.calls.clear()
    run_cascade(dict(spec, stages=[{"upsample": str(ckpts["up"])}]), seed=1)
    assert spy.calls[1][1] and all(set(cond.noise_level.tolist()) == {77.0} for _, cond in spy.calls[1][1])


# ------------------------------------------------------------------ (b) interpolation
def test_keyframe_windows_share_their_boundary_and_the_last_is_moved_back():
    assert keyframe_windows(5, 3) == [(0, 3, 0), (2, 3, 9)]  # output frames 0..8, then 9..16
    assert keyframe_windows(6, 3) == [(0, 3, 0), (2, 3, 9), (3, 3, 17)]  # moved back: keyframes 3..5, writes 17..20
    assert keyframe_windows(2, 3) == [(0, 2, 0)]  # shorter than one window
    for T, K in ((5, 3), (6, 3), (17, 3), (9, 4), (2, 2)):
        written = []
        for first, count, start in keyframe_windows(T, K):
            assert count == min(T, K)
            written += range(start, 4 * (first + count - 1) + 1)
        assert written == list(range(4 * T - 3)), (T, K)  # every output frame once, in order


def test_interpolation_keeps_every_input_frame_and_sets_each_levels_flag(ckpts):
    pipe = moviola.load_pipeline(ckpts["interp"], device="cpu")
    calls = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, t, cond=None: calls.append((x.shape, cond)) or inner(x, t, cond)
    video, windows = rand_video(2, 5, 16), []
    out = interpolate(pipe, video, labels=[3, 17], seed=4, on_window=lambda lv, w, z: windows.append((lv, w)))
    assert out.shape == (2, 3, 17, 16, 16) and torch.equal(out[:, :, ::4], video)  # 4T − 3, the input exactly
    assert windows == [(1, 0), (1, 1)] and len(calls) == 2 * 2  # two windows of 2 steps
    for shape, cond in calls:  # guided: the conditional pair, then the null labels, in one batch of 4
        assert shape[2] == 9 and torch.equal(cond.fps, torch.full((4,), 2.0))  # level 1: data.fps / 4
        assert torch.equal(cond.labels, torch.tensor([3, 17, -1, -1]))  # the labels pass through to each window
        assert torch.equal(cond.context_mask[:, 0, :, 0, 0], torch.tensor([1., 0, 0, 0, 1, 0, 0, 0, 1]).expand(4, 9))
    assert torch.equal(calls[0][1].context[:2, :, ::4], video[:, :, 0:3])  # window 0: input frames 0, 1, 2
    assert torch.equal(calls[-1][1].context[:2, :, ::4], video[:, :, 2:5])  # window 1 shares frame 2
    assert not torch.equal(out[:, :, 1:4], out[:, :, 5:8])  # generated, not copies
    assert torch.equal(interpolate(pipe, video, labels=[3, 17], seed=4), out)  # a function of its seed
    assert not torch.equal(interpolate(pipe, video, labels=[3, 17], seed=5)[:, :, 1:4], out[:, :, 1:4])
    calls.clear()
    windows.clear()
    out16 = interpolate(pipe, video[:1, :, :3], labels=[3], factor=16, seed=4,
                        on_window=lambda lv, w, z: windows.append((lv, w)))
    assert out16.shape == (1, 3, 33, 16, 16) and torch.equal(out16[:, :, ::16], video[:1, :, :3])  # 16T − 15
    assert windows == [(1, 0), (2, 0), (2, 1), (2, 2), (2, 3)]  # 3 → 9 frames in one window; 9 → 33 in four
    rates = [float(cond.fps[0]) for _, cond in calls]
    assert rates == [2.0] * 2 + [8.0] * 8  # level 1 at data.fps / 4, then level 2 at data.fps
    calls.clear()
    interpolate(pipe, video[:1, :, :3], labels=[3], level=2, seed=4)  # the second level alone
    assert {float(cond.fps[0]) for _, cond in calls} == {8.0}


def test_interpolating_latents_keeps_them_exactly_and_window_seeds_are_the_seed_first(ckpts):
    pipe = moviola.load_pipeline(ckpts["interp"], device="cpu")
    z = torch.randn(1, 3, 4, 16, 16)
    out = interpolate(pipe, latents=z, labels=[5], seed=2)
    assert out.shape == (1, 3, 13, 16, 16) and torch.equal(out[:, :, ::4], z)
    assert window_seed(9, 1, 0) == 9 and len({window_seed(9, lv, w) for lv in (1, 2) for w in range(4)}) == 8
    pipe.autoencoder.decode = lambda latent: 0.5 * latent  # a lossy decoder: the input frames still come back exactly
    video = rand_video(1, 4, 16)
    out = interpolate(pipe, video, labels=[5], seed=2)
    assert torch.equal(out[:, :, ::4], video)


@pytest.mark.parametrize("name, kwargs, words", [
    ("base", {}, ["context frames", "keyframes"]),
    ("plain", {}, ["context_mode 'prefix2'", "keyframes"]),
    ("interp", {"factor": 8}, ["factor=8", "4", "16"]),
    ("interp", {"factor": 16, "level": 2}, ["level=2", "factor=4"]),
    ("interp", {"video": rand_video(1, 1, 16)}, ["at least 2 frames"]),
])
def test_a_model_or_call_that_cannot_interpolate_is_one_line_before_compute(ckpts, name, kwargs, words):
    pipe = moviola.load_pipeline(ckpts[name], device="cpu")
    pipe.model.forward = lambda *a, **k: pytest.fail("sampled before the error")
    pipe.autoencoder.encode = lambda *a, **k: pytest.fail("encoded before the error")
    kwargs = {"video": rand_video(1, 3, 16), "labels": [1], **kwargs}
    with pytest.raises(ValueError) as e:
        interpolate(pipe, **kwargs)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


# ------------------------------------------------------------------ (c) chunked upsampling
def test_chunks_cover_every_frame_once_with_boundaries_where_documented():
    assert frame_chunks(20, 8) == [Chunk(0, 8, 0, 8), Chunk(8, 16, 8, 14), Chunk(12, 20, 14, 20)]  # last moved back
    assert frame_chunks(16, 8) == [Chunk(0, 8, 0, 8), Chunk(8, 16, 8, 16)]  # overlap 0: at multiples of 8
    assert frame_chunks(20, 8, overlap=2) == [Chunk(0, 8, 0, 7), Chunk(6, 14, 7, 13), Chunk(12, 20, 13, 20)]
    assert frame_chunks(5, 8) == [Chunk(0, 5, 0, 5)]  # shorter than a chunk: one of its own length
    for T in range(1, 30):
        for overlap in (0, 1, 3, 7):
            chunks = frame_chunks(T, 8, overlap)
            kept = [i for c in chunks for i in range(c.keep_start, c.keep_end)]
            assert kept == list(range(T)), (T, overlap)  # every frame once, in order
            assert all(c.start <= c.keep_start < c.keep_end <= c.end for c in chunks)
            assert all(c.end - c.start == min(T, 8) for c in chunks)  # every chunk at the model's length
    with pytest.raises(ValueError, match="overlap"):
        frame_chunks(20, 8, overlap=8)


def test_chunked_upsampling_runs_each_chunk_as_its_own_call_and_keeps_its_part(ckpts):
    pipe = moviola.load_pipeline(ckpts["up"], device="cpu")
    calls = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, t, cond=None: calls.append(cond) or inner(x, t, cond)
    low, parts = rand_video(2, 10, 8), []
    out = upsample(pipe, low, noise_level=0, seed=3, on_chunk=lambda i, c, px: parts.append((c, px)))
    assert out.shape == (2, 3, 10, 16, 16)
    assert [c for c, _ in parts] == [Chunk(0, 4, 0, 4), Chunk(4, 8, 4, 7), Chunk(6, 10, 7, 10)]
    for c, pixels in parts:
        assert torch.equal(out[:, :, c.keep_start:c.keep_end], pixels[:, :, c.keep_start - c.start:c.keep_end - c.start])
    for i, (c, _) in enumerate(parts):  # each chunk's calls see that chunk's frames (level 0: the clean input)
        assert all(torch.equal(cond.low_res, low[:, :, c.start:c.end]) for cond in calls[2 * i:2 * i + 2])
    alone = pipe(low_res=low[:, :, :4], noise_level=0, seed=3)
    assert torch.equal(out[:, :, :4], alone)  # chunk 0 is the ordinary call of the same seed


# ------------------------------------------------------------------ (d) a whole cascade
def test_base_then_sr_then_interpolation_has_the_planned_shape_and_is_a_function_of_its_seed(ckpts):
    spec = {"base": str(ckpts["base"]), "labels": [7],
            "stages": [{"upsample": str(ckpts["up"]), "noise_level": 30}, {"interpolate": str(ckpts["interp"])}]}
    cascade = load_cascade(spec)
    plan = plan_cascade(cascade)
    assert [(s.name, s.frames, s.size, s.pieces) for s in plan.stages] == [
        ("base", 5, (8, 8), 1), ("upsample", 5, (16, 16), 2), ("interpolate", 17, (16, 16), 2)]
    assert plan.frame_rate == 8.0 * 4  # the base's rate (no fps condition: 8) times the factor
    outputs = []
    video = run_cascade(cascade, seed=5, on_stage=lambda i, sp, v: outputs.append(v))
    assert video.shape == (1, 3, 17, 16, 16) and [tuple(v.shape[2:]) for v in outputs] == [
        (5, 8, 8), (5, 16, 16), (17, 16, 16)]
    assert torch.equal(video[:, :, ::4], outputs[1])  # the upsampled frames are the keyframes, exactly
    assert torch.equal(run_cascade(cascade, seed=5), video)
    assert not torch.equal(run_cascade(cascade, seed=6), video)
    base = moviola.load_pipeline(ckpts["base"], device="cpu")
    assert torch.equal(outputs[0], base(labels=[7], seed=5))  # the base stage is the ordinary sample


def test_a_long_base_passes_through(ckpts):
    spec = {"base": str(ckpts["base"]), "labels": [7], "stages": [{"upsample": str(ckpts["up"])}]}
    video = run_cascade(spec, num_frames=9, long="fifo", seed=0)
    assert video.shape == (1, 3, 9, 16, 16)


# ------------------------------------------------------------------ (e) the cascade file's errors
def cascade_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("base: ckpt/base\nstagse: []\n", ["stagse", "did you mean 'stages'"]),
    ("base: ckpt/base\nstages:\n  - {upsample: ckpt/up, nosie_level: 3}\n",
     ["stages[0].nosie_level", "did you mean 'noise_level'"]),
    ("base: ckpt/base\nstages:\n  - {upsampel: ckpt/up}\n", ["stages[0].upsampel", "did you mean 'upsample'"]),
    ("base: {checkpoint: ckpt/base, stpes: 3}\n", ["base.stpes", "'steps'"]),
    ("stages: []\n", ["base", "missing"]),
    ("base: ckpt/base\nstages:\n  - {upsample: ckpt/up, interpolate: ckpt/interp}\n", ["stages[0]", "not both"]),
    ("base: ckpt/base\nstages:\n  - {interpolate: ckpt/interp, factor: 8}\n", ["stages[0]", "factor=8"]),
    ("base: ckpt/base\nstages:\n  - {upsample: ckpt/up, noise_level: -1}\n", ["stages[0].noise_level", "at least 0"]),
    ("base: ckpt/base\nstages:\n  - {upsample: ckpt/up, steps: two}\n", ["stages[0].steps", "integer"]),
    ("base: ckpt/base\nstages:\n  - {upsample: ckpt/up, sampler: dimm}\n", ["stages[0].sampler", "'ddim'"]),
    ("base: {checkpoint: ckpt/base, long: {mode: fifo, partition: 2}}\n", ["base.long.partition", "'partitions'"]),
    ("base: ckpt/base\nstages: {upsample: ckpt/up}\n", ["stages", "a list"]),
    ("base: [unclosed\n", ["not valid YAML"]),
    # against the checkpoints (configs only)
    ("base: ckpt/nowhere\nlabels: [1]\n", ["base", "does not exist"]),
    ("base: ckpt/up\n", ["base", "upsampler", "stages"]),
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {upsample: ckpt/base}\n", ["stages[0]", "not an upsampler"]),
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {interpolate: ckpt/plain}\n", ["stages[0]", "prefix2"]),
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {upsample: ckpt/up, noise_level: 1000}\n", ["noise_level=1000", "999"]),
    ("base: ckpt/base\n", ["base", "class-conditional", "labels"]),
    ("base: ckpt/base\nlabels: [3, 48]\n", ["labels", "48 is out of range for base", "0..47"]),
    ("base: ckpt/base\nlabels: [1]\nprompt: a red circle\n", ["prompt", "no model", "text"]),
    ("base: {checkpoint: ckpt/base, long: fifo}\nlabels: [1]\n", ["base.long", "num_frames"]),
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {upsample: ckpt/up, steps: 5000}\n", ["stages[0].steps", "1000"]),
    # the pipeline's own sampler rules, checked before the first stage computes
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {upsample: ckpt/up_offset, steps: 1000}\n",
     ["stages[0].steps", "steps_offset=1"]),
    ("base: ckpt/base\nlabels: [1]\nstages:\n  - {upsample: ckpt/up_scaled, sampler: ddpm}\n",
     ["stages[0].sampler", "x0_scale"]),
])
def test_cascade_file_errors_are_one_line_and_come_before_any_weights(ckpts, tmp_path, monkeypatch, text, words):
    monkeypatch.setattr(cascade_mod, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights before the error"))
    (tmp_path / "ckpt").symlink_to(ckpts["root"], target_is_directory=True)  # relative to the file's folder
    with pytest.raises(ConfigError) as e:
        run_cascade(cascade_file(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cascade {tmp_path / 'c.yaml'}: ") and all(w in msg for w in words), msg


def test_relative_paths_are_resolved_against_the_files_folder(ckpts, tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (tmp_path / "ckpt").symlink_to(ckpts["root"], target_is_directory=True)
    path = cascade_file(folder, "base: ../ckpt/base\nlabels: 3\nstages:\n  - upsample: ../ckpt/up\n")
    monkeypatch.chdir(ckpts["root"])  # not where the paths are relative to
    c = load_cascade(path)
    assert c.base.checkpoint.resolve() == ckpts["base"].resolve() and c.labels == (3,)
    assert c.stages[0].checkpoint.resolve() == ckpts["up"].resolve()
    assert plan_cascade(c).stages[-1].size == (16, 16)


# ------------------------------------------------------------------ (f) the command line
def test_the_cli_runs_a_cascade_file_and_writes_the_final_video(ckpts, tmp_path, capsys):
    path = cascade_file(tmp_path, f"base: {ckpts['base']}\nlabels: [4]\nseed: 2\nstages:\n"
                                  f"  - {{upsample: {ckpts['up']}, noise_level: 20}}\n"
                                  f"  - {{interpolate: {ckpts['interp']}, factor: 4}}\n")
    out = tmp_path / "final.mp4"
    assert main(["sample", str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert "17 frames of 16×16 at 32 fps" in capsys.readouterr().out
    frames = read_video(out)
    assert frames.shape == (17, 16, 16, 3)
    expected = save_video(run_cascade(path)[0], tmp_path / "expected.mp4", fps=32)  # the file's seed, as the CLI's
    assert (frames.astype(int) - read_video(expected).astype(int)).__abs__().max() <= 1  # the same video
    assert main(["sample", str(path), "--label", "9", "--num-videos", "2", "--seed", "5", "--out-dir",
                 str(tmp_path / "dir"), "--quiet", "--device", "cpu"]) == 0
    rows = (tmp_path / "dir" / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"seed": 6' in rows[1] and '"label": 9' in rows[1]


def test_the_cli_interpolates_a_video_file(ckpts, tmp_path, capsys):
    src = save_video(rand_video(1, 3, 16)[0], tmp_path / "in.mp4", fps=4)
    out = tmp_path / "out.mp4"
    assert main(["sample", str(ckpts["interp"]), "--interpolate", "4", "--video", str(src), "--label", "2",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert "9 frames of 16×16 at 16 fps" in capsys.readouterr().out  # 4T − 3 at 4 × the input's rate
    assert read_video(out).shape[0] == 9


@pytest.mark.parametrize("argv, words", [
    (["CASCADE", "--steps", "3"], ["--steps", "cascade file"]),
    (["CASCADE", "--interpolate", "4"], ["--interpolate", "cascade file"]),
    (["CASCADE", "--long", "fifo"], ["--long fifo", "--frames"]),
    (["INTERP", "--interpolate", "4"], ["--interpolate needs --video"]),
    (["INTERP", "--video", "IN"], ["--video is an option of --interpolate"]),
    (["INTERP", "--interpolate", "4", "--video", "IN", "--frames", "9"], ["--interpolate does not take --frames"]),
    (["INTERP", "--interpolate", "4", "--video", "nowhere.mp4"], ["--video nowhere.mp4", "no such video file"]),
    (["INTERP", "--interpolate", "16", "--interpolate-level", "2", "--video", "IN"], ["level=2", "factor=4"]),
    (["BASE", "--interpolate", "4", "--video", "IN"], ["interpolation needs", "context frames"]),
    (["MISSING", "--label", "1"], ["cascade", "no such file"]),
])
def test_cli_cascade_and_interpolate_errors_are_one_line(ckpts, tmp_path, capsys, monkeypatch, argv, words):
    from moviola.pipelines.base import Pipeline

    monkeypatch.setattr(Pipeline, "denoise", lambda *a, **k: pytest.fail("sampled before the argument error"))
    path = cascade_file(tmp_path, f"base: {ckpts['base']}\nlabels: [4]\n")
    src = save_video(rand_video(1, 3, 16)[0], tmp_path / "in.mp4")
    names = {"CASCADE": str(path), "INTERP": str(ckpts["interp"]), "BASE": str(ckpts["base"]), "IN": str(src),
             "MISSING": str(tmp_path / "missing.yaml")}
    code = main(["sample", *[names.get(a, a) for a in argv], "--out", str(tmp_path / "x.mp4"), "--quiet",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("moviola: error: "), err
    assert all(w in err for w in words), err


def test_the_example_cascade_file_reads(tmp_path):
    """configs/cascades/shapes-example.yaml is a valid cascade file (its checkpoints come from training runs)."""
    example = Path(__file__).resolve().parents[1] / "configs" / "cascades" / "shapes-example.yaml"
    c = load_cascade(example)
    assert [type(s).__name__ for s in c.stages] == ["Interpolate", "Upsample"]
    assert dataclasses.asdict(c.stages[1])["noise_level"] == 50
