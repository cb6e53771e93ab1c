"""The long-video scorer (eval/long_video.py) and ``moviola eval long``: real 257-frame bounce clips pass every
check; a splice, a colour change, a vanished object, a mid-canvas turn, a stall at a wall and an off-axis drift
each fail the check meant to catch it, and only that one."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moviola.cli import main
from moviola.data.shapes import NUM_CLASSES, render_clip, sample_clip
from moviola.eval.long_video import (
    evaluate_long_checkpoint, score_long_batch, score_long_video, windows,
)
from moviola.video import from_uint8

TINY_YAML = """\
name: long-eval-tiny
model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
conditions: {num_classes: 48}
data: {size: 32, frames: 4, count: 8}
train: {steps: 1, batch_size: 2, lr: 1e-3, log_every: 1, checkpoint_every: 1, device: cpu, precision: fp32}
sample: {steps: 1, cfg: 2.0}
"""


def bounce_clip(index: int, size: int = 32, seed: int = 0) -> dict:
    return sample_clip(seed, index, "test", size=size, frames=257, bounce=True)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_windows_cover_every_frame_with_full_windows():
    assert windows(257) == [(s, s + 16) for s in range(0, 256, 16)] + [(241, 257)]
    assert windows(32) == [(0, 16), (16, 32)]
    assert windows(10) == [(0, 10)]
    with pytest.raises(ValueError, match="window"):
        windows(257, 1)


def test_real_257_frame_bounce_clips_hold_with_no_seam_and_reflect_at_the_walls():
    clips = [bounce_clip(i) for i in range(NUM_CLASSES)]  # every class of the test split, S = 32
    report = score_long_batch([c["video"] for c in clips], [c["label"] for c in clips])
    for c, r in zip(clips, report["rows"]):
        why = (c["caption"], {k: r[k] for k in ("colour_shape_held", "one_object_fraction", "max_jump_ratio",
                                                "reversals", "wall_stalls", "off_axis_drift", "initial_direction")})
        assert len(r["windows"]) == 17 and r["colour_shape_held"], why
        assert r["one_object_fraction"] == 1.0 and r["tracked_frames"] == 257, why
        assert r["seams"] == 0 and r["max_jump_ratio"] <= 1.01, why  # S/32 a frame, exactly
        assert r["reflects"] and r["mid_canvas_reversals"] == 0 and r["wall_stalls"] == [], why
        assert r["wall_reversals"] >= 10, why  # 256 px of travel over a 20 px span: the check was exercised
        assert r["direction_ok"] and r["axis_held"], why
    for key in ("held_rate", "one_object_mean", "one_object_rate", "goal_rate", "no_seam_rate", "reflect_rate",
                "direction_acc", "axis_held_rate", "window_colour_acc", "window_shape_acc"):
        assert report[key] == 1.0, key
    assert report["n"] == 48 and report["max_jump_ratio_max"] <= 1.01


def test_larger_canvas_and_float_input():
    for i in (1, 18, 31, 46):
        c = bounce_clip(i, size=64, seed=2)
        r = score_long_video(c["video"], c["label"])
        assert r["colour_shape_held"] and r["seams"] == 0 and r["reflects"] and r["direction_ok"], c["caption"]
        assert r["wall_reversals"] >= 10
    c = bounce_clip(7)
    a, b = score_long_video(c["video"], c["label"]), score_long_video(from_uint8(c["video"]), c["label"])
    assert a == b


def _shift(frames: np.ndarray, pixels: int, axis: int) -> np.ndarray:
    """Roll the frames by ``pixels`` along ``axis`` (0: x, 1: y); the object stays on the canvas (see callers)."""
    return np.roll(frames, pixels, axis=2 if axis == 0 else 1)


def _off_axis_towards_centre(c: dict, pixels: int) -> tuple[int, int]:
    """(signed shift, image axis) that moves clip ``c``'s object ``pixels`` towards the centre across its motion."""
    off = 1 if c["direction"] in ("left", "right") else 0  # 1: shift in y, 0: shift in x
    fg = c["video"][0].max(axis=-1) > 80
    centre = np.nonzero(fg)[0].mean() if off == 1 else np.nonzero(fg)[1].mean()
    return (pixels if centre < 16 else -pixels), off


def test_a_spliced_jump_is_a_seam_and_only_a_seam():
    c = bounce_clip(5)  # red square right
    video = c["video"].copy()
    shift, axis = _off_axis_towards_centre(c, 6)
    video[100:] = _shift(video[100:], shift, axis)
    r = score_long_video(video, c["label"])
    assert r["seams"] == 1 and r["jumps"][0]["frame"] == 100
    assert 5.5 < r["max_jump_ratio"] < 7  # hypot(6, 1) frames of travel
    assert r["colour_shape_held"] and r["one_object_fraction"] == 1.0 and r["mid_canvas_reversals"] == 0
    report = score_long_batch([c["video"], video], [c["label"]] * 2)
    assert report["no_seam_rate"] == 0.5 and report["max_jump_ratio_max"] == r["max_jump_ratio"]
    # a 2-pixel splice is under 3x the expected travel: not a seam
    small = c["video"].copy()
    shift, axis = _off_axis_towards_centre(c, 2)
    small[100:] = _shift(small[100:], shift, axis)
    assert score_long_video(small, c["label"])["seams"] == 0


def test_a_colour_or_shape_change_midway_is_not_held():
    start = (10.3, 17.0)
    red = render_clip("red", "circle", "right", frames=257, start=start, bounce=True)
    blue = render_clip("blue", "circle", "right", frames=257, start=start, bounce=True)
    square = render_clip("red", "square", "right", frames=257, start=start, bounce=True)
    target = {"colour": "red", "shape": "circle", "direction": "right"}
    assert score_long_video(red, target)["colour_shape_held"]
    r = score_long_video(np.concatenate([red[:128], blue[128:]]), target)
    assert not r["colour_shape_held"]
    assert [w["colour"] for w in r["windows"]] == ["red"] * 8 + ["blue"] * 9
    assert all(w["shape_ok"] for w in r["windows"]) and r["seams"] == 0 and r["reflects"]
    r = score_long_video(np.concatenate([red[:208], square[208:]]), target)
    assert not r["colour_shape_held"] and all(w["colour_ok"] for w in r["windows"])
    assert [w["shape"] for w in r["windows"]] == ["circle"] * 13 + ["square"] * 4
    report = score_long_batch([red, np.concatenate([red[:128], blue[128:]])], [target] * 2)
    assert report["held_rate"] == 0.5 and report["window_colour_acc"] == (17 + 8) / 34


def test_an_object_missing_for_20_frames_lowers_the_one_object_fraction():
    c = bounce_clip(13)
    gone = c["video"].copy()
    gone[120:140] = 0
    r = score_long_video(gone, c["label"])
    assert r["one_object_fraction"] == pytest.approx(237 / 257) and r["one_object_fraction"] < 0.95
    assert r["colour_shape_held"] and r["seams"] == 0  # it comes back where it would have been: no seam
    short = c["video"].copy()
    short[120:130] = 0  # 10 frames: 247 / 257 > 0.95
    assert score_long_video(short, c["label"])["one_object_fraction"] >= 0.95
    report = score_long_batch([c["video"], gone], [c["label"]] * 2)
    assert report["one_object_rate"] == 0.5 and report["goal_rate"] == 0.5 and report["held_rate"] == 1.0


def test_a_turn_in_mid_canvas_fails_reflects_and_a_turn_at_the_wall_does_not():
    target = {"colour": "red", "shape": "circle", "direction": "right"}
    short = render_clip("red", "circle", "right", size=32, frames=9)  # no bounce: centre x 12 .. 20
    assert score_long_video(short, target)["reflects"]
    turned = np.concatenate([short, short[-2::-1]])  # back from x = 20, 6 px short of the wall at 26
    r = score_long_video(turned, target)
    assert not r["reflects"] and r["mid_canvas_reversals"] == 1 and r["reversals"][0]["frame"] == 8
    assert r["seams"] == 0 and r["colour_shape_held"]
    full = render_clip("red", "circle", "right", size=32, frames=21)  # no bounce: x 6 .. 26, wall to wall
    r = score_long_video(np.concatenate([full, full[-2::-1], full[1:]]), target)
    assert r["reflects"] and r["wall_reversals"] == 2 and r["mid_canvas_reversals"] == 0


def test_a_stall_at_a_wall_and_an_off_axis_drift_fail_reflects():
    target = {"colour": "green", "shape": "square", "direction": "right"}
    full = render_clip("green", "square", "right", size=32, frames=21)
    stuck = np.concatenate([full, np.repeat(full[-1:], 12, axis=0), full[-2::-1]])
    r = score_long_video(stuck, target)
    assert not r["reflects"] and r["wall_stalls"] == [20] and r["mid_canvas_reversals"] == 0
    # staying a few frames at the wall is a bounce between frames, not a stall
    assert score_long_video(np.concatenate([full, np.repeat(full[-1:], 3, axis=0), full[-2::-1]]), target)["reflects"]
    # the same video without its way back: stopped at the wall for good
    assert not score_long_video(np.concatenate([full, np.repeat(full[-1:], 12, axis=0)]), target)["reflects"]
    c = bounce_clip(9)  # green circle right
    step, axis = _off_axis_towards_centre(c, 1)  # one pixel across the motion every 8 frames: 7 px in 64
    drift = np.stack([_shift(c["video"][t:t + 1], step * (t // 8), axis)[0] for t in range(64)])
    assert score_long_video(c["video"][:64], c["label"])["reflects"]
    r = score_long_video(drift, c["label"])
    assert not r["reflects"] and r["off_axis_drift"] > 6 and r["seams"] == 0


class StubPipeline:
    """A pipeline whose videos are real bounce clips of the asked labels; records its calls."""

    def __init__(self):
        self.calls = []
        self.accepts = frozenset({"labels"})
        self.model = SimpleNamespace(num_classes=NUM_CLASSES)
        self.config = SimpleNamespace(data=SimpleNamespace(palette=None), sample=SimpleNamespace(cfg=1.0))

    def __call__(self, labels=None, num_frames=None, long=None, steps=None, cfg=None, sampler=None, seed=0,
                 batch_size=16):
        self.calls.append({"n": len(labels), "num_frames": num_frames, "long": long, "steps": steps, "seed": seed})
        return torch.stack([from_uint8(sample_clip(0, y, "test", frames=num_frames, bounce=True)["video"])
                            for y in labels])


class OldPipeline(StubPipeline):
    """A build whose pipeline takes no ``long=``."""

    def __call__(self, labels=None, num_frames=None, steps=None, cfg=None, sampler=None, seed=0, batch_size=16):
        raise AssertionError("sampled although long= is not taken")


def test_checkpoint_evaluation_passes_long_to_the_pipeline(monkeypatch):
    import moviola.pipelines.generate

    stub = StubPipeline()
    monkeypatch.setattr(moviola.pipelines.generate, "load_pipeline", lambda path, device=None: stub)
    result = evaluate_long_checkpoint("stub", frames=100, long="fifo", steps=3, seed=5, batch_size=16)
    assert [c["long"] for c in stub.calls] == ["fifo"] * 3 and {c["num_frames"] for c in stub.calls} == {100}
    assert [c["seed"] for c in stub.calls] == [5, 21, 37]
    assert result["all"]["n"] == 48 and result["all"]["goal_rate"] == 1.0 and result["all"]["reflect_rate"] == 1.0
    assert result["settings"]["long"] == "fifo" and result["settings"]["frames"] == 100
    assert {r["split"] for r in result["rows"]} == {"seen", "holdout"} and result["holdout"]["n"] == 8
    with pytest.raises(ValueError, match="long must be one of"):
        evaluate_long_checkpoint("stub", frames=100, long="sideways")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("long-eval")
    (tmp / "cfg.yaml").write_text(TINY_YAML)
    assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


def test_cli_samples_a_checkpoint_without_long_and_refuses_long_where_the_build_lacks_it(tiny_run, tmp_path, capsys,
                                                                                        monkeypatch):
    code, out, err = run_cli(capsys, "eval", "long", "--checkpoint", tiny_run, "--frames", "4", "--steps", "1",
                             "--quiet", "--batch-size", "16", "--json", tmp_path / "r.json")
    assert code == 0, err
    result = json.loads(out)
    assert result == json.loads((tmp_path / "r.json").read_text())
    assert result["all"]["n"] == 48 and result["settings"]["long"] is None and result["settings"]["frames"] == 4
    assert 0.0 <= result["all"]["held_rate"] <= 1.0
    import moviola.pipelines.generate

    monkeypatch.setattr(moviola.pipelines.generate, "load_pipeline", lambda path, device=None: OldPipeline())
    code, _, err = run_cli(capsys, "eval", "long", "--checkpoint", tiny_run, "--frames", "257", "--long", "fifo")
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "long sampling (--long fifo) is not available in this build" in lines[0], err
    code, _, err = run_cli(capsys, "eval", "long", "--checkpoint", tiny_run)
    assert code == 2 and "--frames" in err


def test_cli_scores_a_folder_of_257_frame_bounce_clips_as_held_with_no_seam(tmp_path, capsys):
    clips = tmp_path / "clips"
    assert main(["data", "shapes", "--out", str(clips), "--split", "test", "--count", "12", "--frames", "257",
                 "--bounce"]) == 0
    capsys.readouterr()
    code, out, err = run_cli(capsys, "eval", "long", "--videos", clips, "--quiet", "--csv", tmp_path / "rows.csv")
    assert code == 0, err
    result = json.loads(out)
    every = result["all"]
    assert every["n"] == 12 and every["frames"] == 257
    for key in ("held_rate", "one_object_rate", "goal_rate", "no_seam_rate", "reflect_rate", "direction_acc"):
        assert every[key] == 1.0, (key, every)
    assert every["max_jump_ratio_max"] < 2.0  # mp4 round trip: about 1.5 at most
    rows = list(csv.DictReader((tmp_path / "rows.csv").read_text().splitlines()))
    assert len(rows) == 12 and all(r["colour_shape_held"] == "True" and r["seams"] == "0" for r in rows)
    code, _, err = run_cli(capsys, "eval", "long", "--videos", clips, "--frames", "257")
    assert code == 2 and "--frames" in err
    code, _, err = run_cli(capsys, "eval", "long")
    assert code == 2 and "exactly one of" in err
