"""Video file IO: mp4 (PyAV), gif (Pillow), png grids, and the [-1, 1] <-> uint8 conversions.

Tensors follow the project layout: a video is ``(C, T, H, W)`` float in ``[-1, 1]``, a batch is
``(B, C, T, H, W)``. On disk and in numpy the layout is ``(T, H, W, 3)`` uint8, the order every
codec and image library expects.

Notes on the formats:
- mp4 is written with libx264, ``yuv420p`` (the only pixel format every player decodes) and a low
  CRF, so a round trip is close to lossless. ``yuv420p`` needs even width and height: odd sizes are
  padded by replicating the last row / column, so such a file decodes one pixel larger.
- gif is written with Pillow (loops forever, ``duration = 1000 / fps`` ms, stored in 1/100 s).
  Pillow merges consecutive identical frames into one longer frame, so a gif of a static video
  decodes to fewer frames than were written.
- png writes a grid: one row per video, one column per frame.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

VideoLike = Union[torch.Tensor, np.ndarray]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".png")
MP4_CRF = 10  # x264 constant rate factor: low enough that 8-bit round trips stay within a few levels
GRID_PAD_VALUE = 255  # white separators between tiles, visible on the black Moving Shapes canvas

__all__ = [
    "SUPPORTED_SUFFIXES",
    "VideoDecodeError",
    "from_uint8",
    "probe_video",
    "read_video",
    "save_video",
    "save_video_grid",
    "to_uint8",
]


class VideoDecodeError(ValueError):
    """A file could not be decoded as a video (empty, truncated, or not a video at all)."""

    def __init__(self, path: Union[str, Path], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode video {str(path)!r}: {reason}")


# ----------------------------------------------------------------------------- conversions


def to_uint8(video: VideoLike) -> np.ndarray:
    """Float ``(C,T,H,W)`` (or ``(B,C,T,H,W)``) in [-1, 1] -> uint8 ``(T,H,W,3)`` (or ``(B,T,H,W,3)``).

    Values are clamped and rounded (not truncated) so ``from_uint8`` followed by ``to_uint8``
    is the identity. One channel is repeated to RGB.
    """
    x = torch.as_tensor(video).detach().to("cpu", torch.float32)
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a (C,T,H,W) or (B,C,T,H,W) float video, got shape {tuple(x.shape)}")
    channel_dim = x.ndim - 4
    channels = x.shape[channel_dim]
    if channels == 1:
        x = x.repeat_interleave(3, dim=channel_dim)
    elif channels != 3:
        raise ValueError(f"expected 1 or 3 channels in dim {channel_dim}, got {channels} (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError("video contains NaN or inf values")
    x = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    # (..., C, T, H, W) -> (..., T, H, W, C)
    x = x.movedim(channel_dim, -1)
    return np.ascontiguousarray(x.numpy())


def from_uint8(frames: VideoLike) -> torch.Tensor:
    """uint8 ``(T,H,W,3)`` (or ``(B,T,H,W,3)``) -> float32 ``(3,T,H,W)`` (or batched) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got dtype {x.dtype}")
    if x.ndim not in (4, 5) or x.shape[-1] != 3:
        raise ValueError(f"expected (T,H,W,3) or (B,T,H,W,3) uint8 frames, got shape {tuple(x.shape)}")
    # (..., T, H, W, 3) -> (..., 3, T, H, W)
    x = x.movedim(-1, x.ndim - 4).to(torch.float32)
    return (x / 127.5 - 1.0).contiguous()


def _as_frames(video: VideoLike) -> np.ndarray:
    """Any accepted single-video input -> uint8 ``(T,H,W,3)``."""
    if isinstance(video, (torch.Tensor, np.ndarray)) and video.dtype in (np.uint8, torch.uint8):
        frames = np.asarray(video.cpu() if isinstance(video, torch.Tensor) else video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 videos must be (T,H,W,3), got shape {frames.shape}")
        return np.ascontiguousarray(frames)
    return to_uint8(video)


def _as_batch(videos: Union[VideoLike, Sequence[VideoLike]]) -> np.ndarray:
    """Any accepted batch input -> uint8 ``(B,T,H,W,3)``."""
    if isinstance(videos, (list, tuple)):
        frames = [_as_frames(v) for v in videos]
        if not frames:
            raise ValueError("got an empty list of videos")
        if len({f.shape for f in frames}) != 1:
            raise ValueError(f"all videos in a grid must share one shape, got {sorted({f.shape for f in frames})}")
        return np.stack(frames)
    if videos.dtype in (np.uint8, torch.uint8):
        batch = np.asarray(videos.cpu() if isinstance(videos, torch.Tensor) else videos)
        if batch.ndim != 5 or batch.shape[-1] != 3:
            raise ValueError(f"uint8 video batches must be (B,T,H,W,3), got shape {batch.shape}")
        return np.ascontiguousarray(batch)
    if videos.ndim != 5:
        raise ValueError(f"expected a (B,C,T,H,W) batch, got shape {tuple(videos.shape)}")
    return to_uint8(videos)


# ----------------------------------------------------------------------------- writing


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"unsupported video suffix {path.suffix!r} for {str(path)!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


def _check_fps(fps: float) -> None:
    if not (isinstance(fps, (int, float, Fraction)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p subsamples chroma 2x2, so x264 refuses odd sizes: replicate the last row/column."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import av

    frames = _pad_to_even(frames)
    _, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(MP4_CRF), "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame, mode="RGB") for frame in frames]
    duration = max(1, round(1000.0 / fps))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)


def _png_grid(batch: np.ndarray, padding: int) -> np.ndarray:
    """``(B,T,H,W,3)`` -> one image with rows = videos, columns = frames."""
    b, t, h, w, _ = batch.shape
    grid = np.full((b * h + (b - 1) * padding, t * w + (t - 1) * padding, 3), GRID_PAD_VALUE, np.uint8)
    for i in range(b):
        for j in range(t):
            y, x = i * (h + padding), j * (w + padding)
            grid[y : y + h, x : x + w] = batch[i, j]
    return grid


def _tile(batch: np.ndarray, padding: int) -> np.ndarray:
    """``(B,T,H,W,3)`` -> ``(T,H',W',3)``: the B videos side by side in a near-square grid."""
    b, t, h, w, _ = batch.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.full((t, rows * h + (rows - 1) * padding, cols * w + (cols - 1) * padding, 3), GRID_PAD_VALUE, np.uint8)
    for k in range(rows * cols):
        y, x = (k // cols) * (h + padding), (k % cols) * (w + padding)
        # empty cells of the last row stay black, not separator-coloured
        out[:, y : y + h, x : x + w] = batch[k] if k < b else 0
    return out


def _write(frames: np.ndarray, path: Path, suffix: str, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        _write_mp4(frames, path, fps)
    else:
        _write_gif(frames, path, fps)


def save_video(video: VideoLike, path: Union[str, Path], fps: float = 8) -> Path:
    """Write one video; the suffix picks the format (``.mp4``, ``.gif``, ``.png``).

    ``video`` is a float ``(C,T,H,W)`` tensor/array in [-1, 1] or uint8 ``(T,H,W,3)``; a
    ``(B,C,T,H,W)`` batch is handed to :func:`save_video_grid`. A png is a row of frames.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    _check_fps(fps)
    if video.ndim == 5:
        return save_video_grid(video, path, fps=fps)
    frames = _as_frames(video)
    if frames.shape[0] == 0:
        raise ValueError("cannot save a video with zero frames")
    if suffix == ".png":
        return save_video_grid(frames[None], path, fps=fps)
    _write(frames, path, suffix, fps)
    return path


def save_video_grid(
    videos: Union[VideoLike, Sequence[VideoLike]], path: Union[str, Path], fps: float = 8, padding: int = 2
) -> Path:
    """Write a batch of videos as one file.

    mp4/gif: the B videos play side by side, tiled in a near-square grid (``ceil(sqrt(B))``
    columns). png: rows = videos, columns = frames. ``padding`` pixels of white separate tiles.
    Accepts ``(B,C,T,H,W)`` float in [-1, 1], uint8 ``(B,T,H,W,3)`` or a list of single videos.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    _check_fps(fps)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch = _as_batch(videos)
    if batch.shape[0] == 0 or batch.shape[1] == 0:
        raise ValueError(f"cannot save an empty batch of shape {batch.shape}")
    if suffix == ".png":
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_png_grid(batch, padding), mode="RGB").save(path, format="PNG")
        return path
    _write(_tile(batch, padding), path, suffix, fps)
    return path


# ----------------------------------------------------------------------------- reading


def read_video(
    path: Union[str, Path], stride: int = 1, max_frames: int | None = None, start: int = 0
) -> np.ndarray:
    """Decode a video file (mp4, gif, webm, avi, ...) to uint8 ``(T,H,W,3)`` with PyAV.

    Keeps frames ``start, start + stride, ...`` and stops after ``max_frames`` of them, so a
    clip is read without decoding the rest of a long file. Any decoding failure, and a file with
    no decodable frame, raises :class:`VideoDecodeError` naming the path.
    """
    import av
    from av.video.reformatter import VideoReformatter

    path = Path(path)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # one reformatter keeps its swscale context across frames; frame.to_ndarray(format=...)
            # builds a new one per frame, which is ~5x slower on small clips
            reformatter = VideoReformatter()
            for i, frame in enumerate(container.decode(stream)):
                if i < start or (i - start) % stride:
                    continue
                frames.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise VideoDecodeError(path, f"{type(err).__name__}: {err}") from err
    if not frames:
        raise VideoDecodeError(path, f"no frames decoded (start={start})")
    return np.stack(frames)


def video_fps(path: Union[str, Path]) -> Optional[float]:
    """The frame rate a video file declares, None when it declares none or cannot be read (``read_video`` says
    why): a gif's from its frame duration (PyAV's average rate for a gif is a guess), others' from
    :func:`probe_video`."""
    if Path(path).suffix.lower() == ".gif":
        from PIL import Image

        try:
            with Image.open(path) as im:
                duration = im.info.get("duration")
            return 1000.0 / duration if duration else None
        except (OSError, ValueError):
            return None
    try:
        return probe_video(path)["fps"]
    except (VideoDecodeError, OSError):
        return None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)``; a video file gives its first frame (image-to-video).

    A missing file is a FileNotFoundError, an unreadable one a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {str(path)!r}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:  # not an image by name: try it as a video
        try:
            return read_video(path, max_frames=1)[0]
        except VideoDecodeError:
            pass  # maybe an image without a usual suffix: Pillow decides below
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {str(path)!r} as an image or a video's first frame "
                         f"({type(err).__name__}: {err})") from err


def probe_video(path: Union[str, Path]) -> dict:
    """Read a container header only: ``{"frames": int | None, "height", "width", "fps"}``.

    ``frames`` is None when the container does not record a count (gif, webm, some avi), so
    callers must then decode to learn the length. Failures raise :class:`VideoDecodeError`.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            frames = int(stream.frames) or None
            rate = stream.average_rate
            return {
                "frames": frames,
                "height": int(stream.codec_context.height),
                "width": int(stream.codec_context.width),
                "fps": float(rate) if rate else None,
            }
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        raise VideoDecodeError(path, f"{type(err).__name__}: {err}") from err
