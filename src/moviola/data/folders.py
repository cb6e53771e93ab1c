"""A folder of video files as a dataset, with captions from a ``captions.jsonl`` beside them.

Real folders contain broken files. Rather than crash an hour into training, bad items are
skipped and counted in ``dataset.skipped`` (reason -> count):

- ``empty``: a zero-byte file (checked at init, a stat call).
- ``unreadable``: PyAV cannot open or decode it (truncated, not a video, no video stream).
- ``too_short``: fewer than ``(frames - 1) * stride + 1`` frames, the span a clip needs.
- ``bad_caption_line``: a caption line that is not a JSON object with a ``"file"`` string.

With ``probe=True`` (default) each file's container header is opened at init, which catches
unreadable files and, where the container records a frame count (mp4, avi), short ones, so
``len()`` counts usable files. Anything a header cannot reveal (a gif or webm that is too short,
a stream corrupt past its header) is caught lazily: ``__getitem__`` counts the reason, marks the
file bad and returns the next usable item instead. Lazy counts live in the process that read
the item (each DataLoader worker has its own). A folder with no usable file is a ValueError.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from moviola.data.transforms import SizeLike, resize_and_crop, to_hw
from moviola.video import VideoDecodeError, from_uint8, probe_video, read_video

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".webm", ".avi")

__all__ = ["VIDEO_SUFFIXES", "VideoFolder"]


class _TooShort(Exception):
    pass


class VideoFolder(Dataset):
    """Clips of ``frames`` frames every ``stride`` frames, resized and center-cropped to ``size``.

    Items are ``dict(video (3,T,H,W) float32 in [-1,1], label int64, caption str)``, the same as
    :class:`moviola.data.shapes.MovingShapes`. ``caption`` is ``""`` and ``label`` is -1 when the
    caption file has no entry for the file. Files are found recursively and sorted, so indices
    are stable; caption entries name files by their path relative to ``root``.
    """

    def __init__(
        self,
        root: Union[str, Path],
        frames: int = 16,
        stride: int = 1,
        size: SizeLike = 32,
        captions: Optional[Union[str, Path]] = "captions.jsonl",
        random_offset: bool = False,
        probe: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"video folder {str(self.root)!r} does not exist or is not a directory")
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.frames, self.stride, self.size = frames, stride, to_hw(size)
        self.span = (frames - 1) * stride + 1  # source frames one clip covers
        self.random_offset = bool(random_offset)
        self.skipped: Counter[str] = Counter()
        self.captions = self._load_captions(captions)

        candidates = sorted(
            p for p in self.root.rglob("*")
            if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        self.files: list[Path] = []
        self._lengths: list[Optional[int]] = []  # frame count from the header, None if unknown
        for path in candidates:
            if path.stat().st_size == 0:
                self.skipped["empty"] += 1
                continue
            length = None
            if probe:
                try:
                    length = probe_video(path)["frames"]
                except VideoDecodeError:
                    self.skipped["unreadable"] += 1
                    continue
                if length is not None and length < self.span:
                    self.skipped["too_short"] += 1
                    continue
            self.files.append(path)
            self._lengths.append(length)
        if not self.files:
            raise ValueError(
                f"no usable video in {str(self.root)!r}: {len(candidates)} files with suffixes "
                f"{', '.join(VIDEO_SUFFIXES)}, skipped {dict(self.skipped)} (need {self.span} frames each)"
            )
        self._bad: set[int] = set()

    def _load_captions(self, captions: Optional[Union[str, Path]]) -> dict[str, dict]:
        if captions is None:
            return {}
        path = Path(captions)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            return {}
        table: dict[str, dict] = {}
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.skipped["bad_caption_line"] += 1
                continue
            if not isinstance(record, dict) or not isinstance(record.get("file"), str):
                self.skipped["bad_caption_line"] += 1
                continue
            table[str(PurePosixPath(record["file"]))] = record
        return table

    def __len__(self) -> int:
        return len(self.files)

    def _offset(self, length: int) -> int:
        if not self.random_offset or length <= self.span:
            return 0
        # torch's RNG: seeded by torch.manual_seed and distinct per DataLoader worker
        return int(torch.randint(0, length - self.span + 1, ()).item())

    def _read(self, i: int) -> np.ndarray:
        path, length = self.files[i], self._lengths[i]
        if self.random_offset and length is None:
            every = read_video(path)  # length unknown: decode all once, then pick the window
            if len(every) < self.span:
                raise _TooShort
            start = self._offset(len(every))
            return every[start : start + self.span : self.stride]
        clip = read_video(path, stride=self.stride, max_frames=self.frames, start=self._offset(length or 0))
        if len(clip) < self.frames:
            raise _TooShort
        return clip

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                clip = self._read(i)
            except VideoDecodeError:
                self.skipped["unreadable"] += 1
            except _TooShort:
                self.skipped["too_short"] += 1
            else:
                return self._item(i, clip)
            self._bad.add(i)
        raise RuntimeError(f"no readable video left in {str(self.root)!r}; skipped {dict(self.skipped)}")

    def _item(self, i: int, clip: np.ndarray) -> dict:
        video = resize_and_crop(from_uint8(clip), self.size)  # (3, T, H, W) in [-1, 1]
        record = self.captions.get(self.files[i].relative_to(self.root).as_posix(), {})
        label = record.get("label", -1)
        if not isinstance(label, int) or isinstance(label, bool):
            label = -1
        text = record.get("caption", "")
        return {
            "video": video,
            "label": torch.tensor(label, dtype=torch.int64),
            "caption": text if isinstance(text, str) else "",
        }
