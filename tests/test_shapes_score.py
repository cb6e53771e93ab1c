"""The Moving Shapes scorer: real clips must score a match; broken clips must not."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from moviola.data.shapes import NUM_CLASSES, class_label, label_to_attributes, render_clip, sample_clip
from moviola.eval import shapes_score
from moviola.eval.shapes_score import count_components, score_batch, score_video
from moviola.video import from_uint8


def test_every_test_clip_scores_a_match_at_s32():
    clips = [sample_clip(0, i, "test", size=32, frames=16) for i in range(2 * NUM_CLASSES)]
    report = score_batch(np.stack([c["video"] for c in clips]), [c["label"] for c in clips])
    assert report["n"] == 96
    bad = [(r["target"], r["colour"], r["shape"], r["direction"]) for r in report["rows"] if not r["match"]]
    assert bad == []
    assert report["match_rate"] == report["colour_acc"] == report["shape_acc"] == report["direction_acc"] == 1.0
    assert report["connected_fraction_mean"] == 1.0
    assert report["multiple_objects_rate"] == 0.0
    assert report["area_cv_mean"] < 0.02  # integer-pixel motion: the area barely changes


@pytest.mark.parametrize("size, count", [(64, 48), (128, 12), (256, 6)])
def test_test_clips_match_at_larger_sizes_and_other_lengths(size, count):
    clips = [sample_clip(1, i, "test", size=size, frames=8 + i % 14) for i in range(count)]
    for c in clips:
        row = score_video(c["video"])
        assert (row["colour"], row["shape"], row["direction"]) == (c["colour"], c["shape"], c["direction"])
        assert row["connected_fraction"] == 1.0


def test_float_input_equals_uint8_input():
    clip = sample_clip(0, 17, "test")["video"]
    a, b = score_video(clip), score_video(from_uint8(clip))
    assert a == b
    batch = torch.stack([from_uint8(clip)] * 2)  # (B, C, T, H, W)
    assert score_batch(batch, [17, 17])["match_rate"] == 1.0


def test_fill_ratios_near_ideal():
    for shape, ideal in [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)]:
        row = score_video(render_clip("blue", shape, "down", size=256, frames=2, start=(100.3, 90.7)))
        assert row["shape"] == shape
        assert abs(row["fill"] - ideal) < 0.03


def test_static_object_is_static():
    clip = sample_clip(0, 5, "test")["video"]  # label 5: red square right
    still = np.repeat(clip[:1], 16, axis=0)
    row = score_video(still)
    assert row["direction"] == "static"
    assert row["colour"] == "red" and row["shape"] == "square"
    assert score_batch(still[None], [5])["direction_acc"] == 0.0
    # slow drift, under a quarter of the expected travel, still counts as static
    slow = render_clip("red", "square", "right", size=64, frames=16)[::1]
    slow = np.stack([slow[t // 5] for t in range(16)])  # moves 3 steps of 2 px over 15 frames
    assert score_video(slow)["direction"] == "static"


def test_reversed_clip_reverses_direction_and_wrong_prompt_fails():
    for index, opposite in [(0, "right"), (1, "left"), (2, "down"), (3, "up")]:  # red circle l/r/u/d
        clip = sample_clip(0, index, "test")["video"]
        assert score_video(clip[::-1])["direction"] == opposite
    clip = sample_clip(0, 1, "test")  # red circle right
    wrong = {"colour": "blue", "shape": "circle", "direction": "right"}
    report = score_batch([clip["video"]], [wrong])
    row = report["rows"][0]
    assert not row["colour_ok"] and row["shape_ok"] and row["direction_ok"] and not row["match"]
    assert report["colour_acc"] == 0.0 and report["shape_acc"] == 1.0 and report["match_rate"] == 0.0


def test_each_palette_colour_and_each_shape_is_recognised():
    for label in range(NUM_CLASSES):
        colour, shape, direction = label_to_attributes(label)
        row = score_video(render_clip(colour, shape, direction, size=32, frames=4))
        assert (row["colour"], row["shape"], row["direction"]) == (colour, shape, direction)


def test_two_objects_are_flagged():
    a = render_clip("red", "circle", "right", size=64, frames=16, start=(14.0, 14.0))
    b = render_clip("red", "circle", "right", size=64, frames=16, start=(14.0, 48.0))
    row = score_video(np.maximum(a, b))
    assert row["multiple_objects"] and row["n_objects"] == 2
    assert row["connected_fraction"] == 0.0
    single = score_video(a)
    assert not single["multiple_objects"] and single["connected_fraction"] == 1.0
    report = score_batch([np.maximum(a, b), a], [class_label("red", "circle", "right")] * 2)
    assert report["multiple_objects_rate"] == 0.5 and report["connected_fraction_mean"] == 0.5


def test_blank_and_partly_blank_videos():
    blank = np.zeros((8, 32, 32, 3), np.uint8)
    row = score_video(blank)
    assert row["colour"] is None and row["shape"] is None and row["direction"] is None
    assert row["area_cv"] is None and row["connected_fraction"] == 0.0 and row["fg_frames"] == 0
    report = score_batch([blank], [0])
    assert report["match_rate"] == 0.0 and report["area_cv_mean"] is None
    # frames with no foreground are ignored for the attributes but count against consistency
    clip = sample_clip(0, 2, "test")["video"].copy()  # red circle up
    clip[4:8] = 0
    row = score_video(clip)
    assert row["direction"] == "up" and row["fg_frames"] == 12
    assert row["connected_fraction"] == 0.75 and row["area_cv"] > 0.5
    one = sample_clip(0, 2, "test")["video"].copy()
    one[1:] = 0
    assert score_video(one)["direction"] is None  # no line through a single point


def test_targets_as_dicts_or_labels_and_errors():
    clips = [sample_clip(0, i, "test", frames=8) for i in range(4)]
    videos = np.stack([c["video"] for c in clips])
    by_label = score_batch(videos, torch.tensor([c["label"] for c in clips]))
    by_dict = score_batch(videos, [{k: c[k] for k in ("colour", "shape", "direction")} for c in clips])
    assert by_label["match_rate"] == by_dict["match_rate"] == 1.0
    with pytest.raises(ValueError, match="2 targets"):
        score_batch(videos, [0, 1])
    with pytest.raises(ValueError, match="purple"):
        score_batch(videos[:1], [{"colour": "purple", "shape": "circle", "direction": "left"}])
    with pytest.raises(ValueError, match="label"):
        score_batch(videos[:1], [99])
    with pytest.raises(ValueError, match="empty"):
        score_batch([], [])


def test_bfs_fallback_agrees_with_scipy(monkeypatch):
    rng = np.random.default_rng(0)
    masks = [rng.random((24, 24)) < p for p in (0.05, 0.3, 0.5, 0.7)]
    masks.append(np.eye(10, dtype=bool))  # diagonal: one 8-connected component
    with_scipy = [count_components(m) for m in masks]
    assert with_scipy[-1] == 1
    monkeypatch.setitem(sys.modules, "scipy", None)  # makes `from scipy import ...` raise ImportError
    assert [count_components(m) for m in masks] == with_scipy
    assert [shapes_score._count_components_bfs(m) for m in masks] == with_scipy


def test_travel_per_frame_is_the_speed_of_real_clips():
    """The rendered object moves S/32 pixels per frame, s times that at frame stride s."""
    from moviola.data.shapes import MovingShapes
    from moviola.eval.shapes_score import score_batch

    for stride in (1, 2, 3):
        data = MovingShapes(count=12, frames=7, stride=stride)
        s = score_batch([data.clip(i)["video"] for i in range(12)], [data.clip(i)["label"] for i in range(12)])
        assert abs(s["travel_per_frame_mean"] - stride) < 0.05 * stride, (stride, s["travel_per_frame_mean"])
