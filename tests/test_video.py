"""Video IO: conversions, mp4/gif round trips, png grids, decode errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from moviola.data.shapes import sample_clip
from moviola.video import (
    VideoDecodeError,
    from_uint8,
    probe_video,
    read_video,
    save_video,
    save_video_grid,
    to_uint8,
)


def gray_ramp(frames: int = 12, h: int = 16, w: int = 16) -> np.ndarray:
    """Frame i is a flat gray of level 16 * i + 8: lets a test tell which frame it got back."""
    levels = (16 * np.arange(frames) + 8).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, h, w, 3)).copy()


# ----------------------------------------------------------------------------- conversions


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 7).expand(3, 1, 1, 7)
    out = to_uint8(x)
    assert out.shape == (1, 1, 7, 3) and out.dtype == np.uint8
    # (x + 1) * 127.5 rounded: -0.999 -> 0.1275 -> 0; 0 -> 127.5 -> 128 (half to even); 0.5 -> 191.25 -> 191
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 128, 191, 255, 255]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 5))
def test_uint8_round_trip_is_exact(seed, frames, batch):
    u8 = np.random.default_rng(seed).integers(0, 256, size=(batch, frames, 4, 5, 3), dtype=np.uint8)
    x = from_uint8(u8)
    assert x.shape == (batch, 3, frames, 4, 5) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), u8)
    np.testing.assert_array_equal(to_uint8(from_uint8(u8[0])), u8[0])


def test_conversion_layout_and_errors():
    u8 = np.zeros((2, 4, 5, 3), np.uint8)
    u8[1, 2, 3] = (255, 0, 255)
    x = from_uint8(u8)  # (3, T, H, W)
    assert x[:, 1, 2, 3].tolist() == [1.0, -1.0, 1.0]
    grey = to_uint8(torch.zeros(1, 2, 4, 5))
    assert grey.shape == (2, 4, 5, 3)  # one channel becomes RGB
    with pytest.raises(ValueError, match="channels"):
        to_uint8(torch.zeros(4, 2, 4, 5))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((3, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(np.zeros((2, 4, 5, 3), np.float32))


# ----------------------------------------------------------------------------- round trips


def test_mp4_round_trip_is_close(tmp_path):
    clip = sample_clip(0, 5, "test", size=32, frames=16)["video"]
    path = save_video(from_uint8(clip), tmp_path / "deep" / "dir" / "clip.mp4", fps=8)
    assert path.is_file()  # parent dirs created
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clip.astype(int)).mean() < 3
    info = probe_video(path)
    assert info["frames"] == 16 and (info["height"], info["width"]) == (32, 32) and info["fps"] == 8


def test_gif_round_trip(tmp_path):
    clip = sample_clip(0, 1, "test", size=32, frames=10)["video"]
    path = save_video(clip, tmp_path / "clip.gif", fps=10)  # uint8 (T,H,W,3) accepted as is
    back = read_video(path)
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip.astype(int)).mean() < 1
    with Image.open(path) as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 100 and im.n_frames == 10


def test_odd_size_mp4_is_padded_by_edge_replication(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 15, 21, 3), dtype=np.uint8)
    frames[:] = frames[:1]  # static, so the codec spends its bits on one picture
    back = read_video(save_video(frames, tmp_path / "odd.mp4"))
    assert back.shape == (3, 16, 22, 3)
    # the padded row / column repeat the last real row / column
    assert np.abs(back[:, 15, :21].astype(int) - back[:, 14, :21].astype(int)).mean() < 6
    assert np.abs(back[:, :15, 21].astype(int) - back[:, :15, 20].astype(int)).mean() < 6


def test_read_video_stride_start_max_frames(tmp_path):
    path = save_video(gray_ramp(12), tmp_path / "ramp.mp4")
    back = read_video(path, stride=3, start=1, max_frames=3)
    assert back.shape == (3, 16, 16, 3)
    levels = back.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [16 * 1 + 8, 16 * 4 + 8, 16 * 7 + 8], atol=3)
    assert len(read_video(path, stride=5)) == 3  # frames 0, 5, 10
    with pytest.raises(ValueError, match="stride"):
        read_video(path, stride=0)


# ----------------------------------------------------------------------------- grids


def test_png_grid_rows_are_videos_columns_are_frames(tmp_path):
    batch = np.random.default_rng(1).integers(0, 256, size=(2, 3, 8, 10, 3), dtype=np.uint8)
    path = save_video_grid(batch, tmp_path / "grid.png", padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 8 + 2, 3 * 10 + 2 * 2, 3)
    np.testing.assert_array_equal(grid[10:18, 24:34], batch[1, 2])  # row 1, column 2
    np.testing.assert_array_equal(grid[0:8, 0:10], batch[0, 0])
    # a single float video saved as png is one row of frames; a (B,C,T,H,W) batch becomes a grid
    one = np.asarray(Image.open(save_video(from_uint8(batch[0]), tmp_path / "row.png")))
    assert one.shape == (8, 3 * 10 + 2 * 2, 3)
    many = np.asarray(Image.open(save_video(from_uint8(batch), tmp_path / "many.png")))
    np.testing.assert_array_equal(many, grid)


def test_mp4_and_gif_grids_tile_videos_side_by_side(tmp_path):
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 2, (5, 3, 4, 8, 8), generator=g).float() * 2 - 1  # 8 pure colours: gif-exact
    for suffix in (".mp4", ".gif"):
        back = read_video(save_video_grid(batch, tmp_path / f"tiles{suffix}", fps=8, padding=2))
        # 5 videos -> 3 columns x 2 rows of 8x8 tiles, 2-pixel separators
        assert back.shape == (4, 2 * 8 + 2, 3 * 8 + 2 * 2, 3)
    gif = read_video(tmp_path / "tiles.gif")
    np.testing.assert_array_equal(gif[:, 10:, 20:], 0)  # the sixth, empty cell is black
    np.testing.assert_array_equal(gif[:, 10:18, 10:18], to_uint8(batch[4]))  # video 4: row 1, column 1
    assert (gif[:, 8:10] == 255).all()  # white separator between the rows
    listed = read_video(save_video_grid([batch[0], batch[1]], tmp_path / "two.gif", padding=0))
    assert listed.shape == (4, 8, 16, 3)


def test_bad_arguments(tmp_path):
    video = torch.zeros(3, 2, 8, 8)
    with pytest.raises(ValueError, match=r"\.mp4.*\.gif.*\.png"):
        save_video(video, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="fps"):
        save_video(video, tmp_path / "clip.mp4", fps=0)
    with pytest.raises(ValueError, match="same shape|share one shape"):
        save_video_grid([video, torch.zeros(3, 2, 4, 4)], tmp_path / "g.png")


# ----------------------------------------------------------------------------- decode errors


def test_decode_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    good = save_video(gray_ramp(8), tmp_path / "good.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (empty, text, truncated):
        with pytest.raises(VideoDecodeError, match=path.name) as info:
            read_video(path)
        assert isinstance(info.value, ValueError) and info.value.path == path
        with pytest.raises(VideoDecodeError):
            probe_video(path)
    with pytest.raises(VideoDecodeError, match="no frames"):
        read_video(good, start=50)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
