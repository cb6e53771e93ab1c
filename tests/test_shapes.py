"""Moving Shapes v1: the generator must match /work/shared/moving_shapes.md exactly."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from moviola.data.shapes import (
    COLOURS,
    DIRECTIONS,
    HOLDOUT,
    SHAPES,
    SIZES,
    MovingShapes,
    caption,
    class_label,
    combos,
    label_to_attributes,
    max_frames_without_bounce,
    render_clip,
    sample_clip,
    write_shapes_folder,
)

SPEC_HOLDOUT = {
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "down"),
    ("yellow", "triangle", "right"),
    ("red", "square", "left"),
    ("green", "triangle", "down"),
    ("blue", "circle", "up"),
    ("yellow", "square", "up"),
}


def coverage(video: np.ndarray, colour: str) -> np.ndarray:
    """Per-pixel covered fraction recovered from the brightest channel: ``(T, H, W)``."""
    return video.max(axis=-1) / max(COLOURS[colour])


def ideal_area(shape: str, size: int) -> float:
    r = 3 * size / 16
    return {"circle": math.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r}[shape]


# ----------------------------------------------------------------------------- constants and labels


def test_constants_follow_the_spec():
    assert list(COLOURS.items()) == [
        ("red", (230, 50, 50)),
        ("green", (50, 200, 80)),
        ("blue", (60, 100, 240)),
        ("yellow", (240, 220, 50)),
    ]
    assert SHAPES == ("circle", "square", "triangle")
    assert DIRECTIONS == ("left", "right", "up", "down")
    assert set(HOLDOUT) == SPEC_HOLDOUT and len(HOLDOUT) == 8


def test_label_formula_and_inverse():
    assert class_label("red", "circle", "left") == 0
    assert class_label("green", "square", "up") == (1 * 3 + 1) * 4 + 2
    assert class_label("blue", "triangle", "right") == (2 * 3 + 2) * 4 + 1
    assert class_label("yellow", "triangle", "down") == 47
    seen = set()
    for ci, c in enumerate(COLOURS):
        for si, s in enumerate(SHAPES):
            for di, d in enumerate(DIRECTIONS):
                label = class_label(c, s, d)
                assert label == (ci * 3 + si) * 4 + di
                assert label_to_attributes(label) == (c, s, d)
                seen.add(label)
    assert seen == set(range(48))
    with pytest.raises(ValueError, match="label"):
        label_to_attributes(48)
    with pytest.raises(ValueError, match="purple"):
        class_label("purple", "circle", "left")


def test_caption_text():
    assert caption("red", "circle", "right") == "a red circle moving right"
    assert sample_clip(0, 3, "test")["caption"] == "a {} {} moving {}".format(*label_to_attributes(3))


# ----------------------------------------------------------------------------- determinism and splits


def test_same_seed_same_bytes_and_index_seed_split_change_the_clip():
    a = sample_clip(0, 7, "train")
    b = sample_clip(0, 7, "train")
    assert a["video"].tobytes() == b["video"].tobytes()
    assert a["video"].dtype == np.uint8 and a["video"].shape == (16, 32, 32, 3)
    assert not np.array_equal(sample_clip(0, 8, "train")["video"], a["video"])
    assert not np.array_equal(sample_clip(1, 7, "train")["video"], a["video"])
    # train index 0 and test index 0 share a class (red circle left) but not the position
    tr, te = sample_clip(0, 0, "train"), sample_clip(0, 0, "test")
    assert tr["label"] == te["label"] == 0
    assert not np.array_equal(tr["video"], te["video"])


@pytest.mark.parametrize(
    "args, digest",
    [
        ((0, 0, "train", 32, 16, False), "140fd63923a4d45e646438b9a9130f0e21eb0d29122feb42688703ff5535eaba"),
        ((0, 5, "test", 64, 16, False), "bcf25362809ed4df58e696eb5b957840cade3742e7e916c75d6da9fd6927c71e"),
        ((3, 7, "train", 32, 8, True), "d8c16974d404e02b5b2238893f772bcd7694ea48e977fd8815076376f1a742b0"),
    ],
)
def test_golden_bytes(args, digest):
    """Pins the benchmark: a changed digest means Moving Shapes v1 changed (that needs a v2)."""
    assert hashlib.sha256(sample_clip(*args)["video"].tobytes()).hexdigest() == digest


def test_holdout_never_in_train_and_splits_cycle_balanced():
    train = [sample_clip(0, i, "train", frames=2) for i in range(400)]
    assert all((c["colour"], c["shape"], c["direction"]) not in HOLDOUT for c in train)
    assert len(combos("train")) == 40 and len(combos("test")) == 48
    assert len({c["label"] for c in train[:40]}) == 40  # any 40 consecutive indices cover every class
    test = [sample_clip(0, i, "test", frames=2) for i in range(48)]
    assert sorted(c["label"] for c in test) == list(range(48))
    assert {(c["colour"], c["shape"], c["direction"]) for c in test} >= SPEC_HOLDOUT
    for c in train + test:
        assert c["label"] == class_label(c["colour"], c["shape"], c["direction"])
        assert c["caption"] == caption(c["colour"], c["shape"], c["direction"])


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", SIZES)
def test_every_size_renders_whole_objects_inside(size):
    for index in range(6):  # covers all three shapes and two of each direction pair
        clip = sample_clip(0, index * 5, "test", size=size, frames=16)
        video = clip["video"]
        assert video.shape == (16, size, size, 3) and video.dtype == np.uint8
        area = coverage(video, clip["colour"]).sum(axis=(1, 2))
        # a clipped object would lose area; supersampling error is well under 3%
        np.testing.assert_allclose(area, ideal_area(clip["shape"], size), rtol=0.03)
        fg = video.max(axis=-1) > 0
        ys, xs = np.nonzero(fg.any(axis=0))[0], np.nonzero(fg.any(axis=1).any(axis=0))[0]
        assert ys.size and xs.size  # the object is drawn


@pytest.mark.parametrize("size", [32, 256])
def test_motion_is_s_over_32_pixels_per_frame_in_the_named_direction(size):
    step = size // 32
    for index in range(4):  # test indices 0..3 are red circle left, right, up, down
        clip = sample_clip(2, index, "test", size=size, frames=6)
        v, d = clip["video"], clip["direction"]
        assert d == DIRECTIONS[index]
        for t in range(5):
            a, b = v[t], v[t + 1]
            shifted = {
                "right": (b[:, step:], a[:, :-step]),
                "left": (b[:, :-step], a[:, step:]),
                "down": (b[step:], a[:-step]),
                "up": (b[:-step], a[step:]),
            }[d]
            np.testing.assert_array_equal(*shifted)


def test_shapes_colours_and_background():
    for shape in SHAPES:
        v = render_clip("green", shape, "right", size=64, frames=1, start=(32.3, 31.6))
        cov = coverage(v, "green")[0]
        assert cov[32, 32] == 1.0  # solid interior
        assert tuple(v[0, 32, 32]) == COLOURS["green"]
        assert v[0, 0, 0].tolist() == [0, 0, 0]  # black background
        partial = (cov > 0) & (cov < 1)
        assert partial.any()  # anti-aliased edge
    tri = coverage(render_clip("red", "triangle", "up", 64, 1, start=(32.0, 32.0)), "red")[0]
    # apex up: the row near the top is narrow, the row near the base is wide (r = 12)
    assert (tri[22] > 0.5).sum() < (tri[42] > 0.5).sum()


def test_frame_limit_without_bounce_names_21():
    for size in SIZES:
        assert max_frames_without_bounce(size) == 21
        sample_clip(0, 1, "test", size=size, frames=21)  # fits exactly
        with pytest.raises(ValueError, match="21"):
            sample_clip(0, 1, "test", size=size, frames=22)
    with pytest.raises(ValueError, match="21"):
        render_clip("red", "circle", "left", frames=22)
    with pytest.raises(ValueError, match="21"):
        MovingShapes(count=1, frames=22)


def test_start_outside_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        render_clip("red", "circle", "right", size=32, frames=16, start=(20.0, 16.0))
    render_clip("red", "circle", "right", size=32, frames=16, start=(6.0, 6.0))  # touches the walls


def test_bounce_long_clip_stays_inside_and_reflects():
    clip = sample_clip(0, 1, "test", size=32, frames=64, bounce=True)  # red circle right
    v = clip["video"]
    assert v.shape == (64, 32, 32, 3)
    assert clip["caption"] == "a red circle moving right"
    cov = coverage(v, "red")
    np.testing.assert_allclose(cov.sum(axis=(1, 2)), ideal_area("circle", 32), rtol=0.03)
    xs = (cov * np.arange(32)[None, None, :]).sum(axis=(1, 2)) / cov.sum(axis=(1, 2))
    steps = np.diff(xs)
    assert (steps > 0.5).any() and (steps < -0.5).any()  # moved both ways: it bounced
    assert steps[0] > 0 or steps[1] > 0  # and started to the right
    ys = (cov * np.arange(32)[None, :, None]).sum(axis=(1, 2)) / cov.sum(axis=(1, 2))
    assert np.ptp(ys) < 1e-6  # no vertical motion


# ----------------------------------------------------------------------------- dataset


def test_dataset_items_and_validation():
    ds = MovingShapes(split="test", count=5, size=32, frames=8, seed=0)
    assert len(ds) == 5
    item = ds[3]
    assert set(item) == {"video", "label", "caption"}
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["video"].min() == -1  # black background
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 3
    assert item["caption"] == caption(*label_to_attributes(3))
    assert torch.equal(ds[3]["video"], item["video"]) and 3 in ds._cache
    assert torch.equal(ds[-2]["video"], item["video"])
    with pytest.raises(IndexError):
        ds[5]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 3, 8, 32, 32) and batch["label"].tolist() == [0, 1, 2, 3]
    uncached = MovingShapes(split="test", count=5, frames=8, cache=False)
    assert torch.equal(uncached[3]["video"], item["video"]) and not uncached._cache
    for bad, match in [
        (dict(size=48), "size"),
        (dict(split="val"), "split"),
        (dict(count=0), "count"),
        (dict(frames=0), "frames"),
        (dict(seed=-1), "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            MovingShapes(**bad)
    assert MovingShapes(count=1, frames=40, bounce=True)[0]["video"].shape == (3, 40, 32, 32)


def test_write_shapes_folder(tmp_path):
    out = write_shapes_folder(tmp_path / "nested" / "shapes", split="test", count=3, size=32, frames=8, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["000000.mp4", "000001.mp4", "000002.mp4", "captions.jsonl"]
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    for i, line in enumerate(lines):
        clip = sample_clip(0, i, "test", 32, 8)
        assert line == {
            "file": f"{i:06d}.mp4",
            "caption": clip["caption"],
            "label": clip["label"],
            "colour": clip["colour"],
            "shape": clip["shape"],
            "direction": clip["direction"],
        }
