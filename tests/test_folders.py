"""VideoFolder and the resize / crop transforms: real files, broken files, captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moviola.data.folders import VideoFolder
from moviola.data.shapes import sample_clip, write_shapes_folder
from moviola.data.transforms import center_crop, resize_and_crop, resize_shorter_side, to_hw
from moviola.eval.shapes_score import score_batch
from moviola.video import from_uint8, save_video


def gray_ramp(frames: int, h: int = 16, w: int = 16) -> np.ndarray:
    """Frame i is a flat gray of level 16 * i + 8, so a test can tell which frames it got."""
    levels = (16 * np.arange(frames) + 8).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, h, w, 3)).copy()


def frame_levels(video: torch.Tensor) -> np.ndarray:
    """Mean uint8 level of each frame of a (3, T, H, W) float video."""
    return ((video + 1) * 127.5).mean(dim=(0, 2, 3)).numpy()


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), split="test", count=12, size=32, frames=16, seed=0)


def add_broken_files(folder: Path) -> None:
    """One of each kind of bad item next to the good ones."""
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video, just text\n" * 50)
    good = (folder / "000000.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    save_video(gray_ramp(4), folder / "short.mp4")  # 4 frames < 16 needed


# ----------------------------------------------------------------------------- transforms


def test_transforms():
    assert to_hw(32) == (32, 32) and to_hw((16, 24)) == (16, 24)
    with pytest.raises(ValueError, match="size"):
        to_hw((16, 0))
    video = torch.linspace(-1, 1, 3 * 2 * 8 * 12).view(3, 2, 8, 12)
    crop = center_crop(video, (4, 6))
    assert torch.equal(crop, video[..., 2:6, 3:9])
    with pytest.raises(ValueError, match="smaller"):
        center_crop(video, 10)
    assert resize_shorter_side(video, 4).shape == (3, 2, 4, 6)
    assert resize_and_crop(video, 4).shape == (3, 2, 4, 4)
    assert resize_and_crop(video, (8, 4)).shape == (3, 2, 8, 4)
    assert resize_and_crop(video, (3, 12)).shape == (3, 2, 3, 12)
    assert torch.equal(resize_and_crop(video, (8, 12)), video)  # right size: untouched, no blur
    flat = torch.full((3, 1, 30, 50), 0.25)
    out = resize_and_crop(flat, 16)
    assert out.shape == (3, 1, 16, 16) and torch.allclose(out, torch.tensor(0.25))


# ----------------------------------------------------------------------------- good folders


def test_shapes_folder_round_trip_still_scores(shapes_dir):
    ds = VideoFolder(shapes_dir, frames=16, size=32)
    assert len(ds) == 12 and dict(ds.skipped) == {}
    items = [ds[i] for i in range(len(ds))]
    lines = [json.loads(line) for line in (shapes_dir / "captions.jsonl").read_text().splitlines()]
    for item, line in zip(items, lines):
        assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["caption"] == line["caption"] and int(item["label"]) == line["label"]
        assert item["label"].dtype == torch.int64
    report = score_batch(torch.stack([it["video"] for it in items]), [int(it["label"]) for it in items])
    assert report["match_rate"] == 1.0 and report["connected_fraction_mean"] == 1.0
    # decoded pixels stay close to the rendered clip
    clip = from_uint8(sample_clip(0, 3, "test", 32, 16)["video"])
    assert (items[3]["video"] - clip).abs().mean() * 127.5 < 3
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 16, 32, 32) and len(batch["caption"]) == 4


def test_frames_stride_and_size(shapes_dir):
    ds = VideoFolder(shapes_dir, frames=8, stride=2, size=16)
    assert ds[0]["video"].shape == (3, 8, 16, 16)
    ds = VideoFolder(shapes_dir, frames=4, size=(16, 24))
    assert ds[0]["video"].shape == (3, 4, 16, 24)
    with pytest.raises(ValueError, match="stride"):
        VideoFolder(shapes_dir, stride=0)
    with pytest.raises(ValueError, match="no usable video"):
        VideoFolder(shapes_dir, frames=9, stride=2)  # needs 17 frames; every file has 16


def test_stride_picks_the_right_frames_and_random_offset(tmp_path):
    save_video(gray_ramp(12, 20, 28), tmp_path / "ramp.mp4")
    ds = VideoFolder(tmp_path, frames=3, stride=2, size=16)
    item = ds[0]
    assert item["video"].shape == (3, 3, 16, 16)
    assert item["caption"] == "" and int(item["label"]) == -1  # no captions.jsonl
    np.testing.assert_allclose(frame_levels(item["video"]), [8, 40, 72], atol=3)
    torch.manual_seed(0)
    # probe=False leaves the length unknown: that path decodes the whole file, then picks a window
    for probe in (True, False):
        shifted = VideoFolder(tmp_path, frames=3, stride=2, size=16, random_offset=True, probe=probe)
        starts = set()
        for _ in range(20):
            levels = frame_levels(shifted[0]["video"])
            np.testing.assert_allclose(np.diff(levels), [32, 32], atol=4)  # still every second frame
            starts.add(int(round((levels[0] - 8) / 16)))
        assert len(starts) > 2 and starts <= set(range(0, 12 - 5 + 1))


def test_gif_files_are_read(tmp_path):
    save_video(gray_ramp(6), tmp_path / "a.gif")
    ds = VideoFolder(tmp_path, frames=6, size=16)
    np.testing.assert_allclose(frame_levels(ds[0]["video"]), 16 * np.arange(6) + 8, atol=1)


# ----------------------------------------------------------------------------- broken items


def test_bad_files_are_skipped_and_counted_at_probe(tmp_path):
    folder = write_shapes_folder(tmp_path, split="test", count=2, size=32, frames=16)
    add_broken_files(folder)
    ds = VideoFolder(folder, frames=16, size=32)
    assert [p.name for p in ds.files] == ["000000.mp4", "000001.mp4"]
    assert dict(ds.skipped) == {"empty": 1, "unreadable": 2, "too_short": 1}
    assert [int(ds[i]["label"]) for i in range(2)] == [0, 1]


def test_bad_files_are_skipped_and_counted_lazily(tmp_path):
    folder = write_shapes_folder(tmp_path, split="test", count=2, size=32, frames=16)
    add_broken_files(folder)
    ds = VideoFolder(folder, frames=16, size=32, probe=False)
    assert len(ds) == 5 and dict(ds.skipped) == {"empty": 1}  # only the zero-byte file is known
    names = [p.name for p in ds.files]
    assert names == ["000000.mp4", "000001.mp4", "short.mp4", "text.mp4", "truncated.mp4"]
    items = [ds[i] for i in range(len(ds))]  # bad items are replaced by the next good one
    assert all(it["video"].shape == (3, 16, 32, 32) for it in items)
    assert [int(it["label"]) for it in items] == [0, 1, 0, 0, 0]  # wrapped around to 000000
    assert dict(ds.skipped) == {"empty": 1, "unreadable": 2, "too_short": 1}
    ds[3]  # a known-bad index is not re-read or re-counted
    assert dict(ds.skipped) == {"empty": 1, "unreadable": 2, "too_short": 1}


def test_nothing_usable_is_a_value_error(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    save_video(gray_ramp(4), tmp_path / "shorty.mp4")
    (tmp_path / "x.mp4").write_text("nope")
    with pytest.raises(ValueError, match="no usable video") as info:
        VideoFolder(tmp_path, frames=16)
    message = str(info.value)
    assert tmp_path.name in message and "3 files" in message
    assert all(f"'{reason}': 1" in message for reason in ("empty", "unreadable", "too_short"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir.*0 files"):
        VideoFolder(tmp_path / "empty_dir")
    with pytest.raises(ValueError, match="not a directory"):
        VideoFolder(tmp_path / "missing")


def test_bad_caption_lines_are_skipped_and_counted(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        save_video(gray_ramp(4), tmp_path / name)
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"file": "a.mp4", "caption": "a red circle moving left", "label": 0}),
                "{this is not json",
                json.dumps(["a", "list"]),
                "",
                json.dumps({"file": "b.mp4", "caption": "no label here"}),
            ]
        )
    )
    ds = VideoFolder(tmp_path, frames=4, size=16)
    assert dict(ds.skipped) == {"bad_caption_line": 2}
    got = [(ds[i]["caption"], int(ds[i]["label"])) for i in range(3)]
    assert got == [("a red circle moving left", 0), ("no label here", -1), ("", -1)]
