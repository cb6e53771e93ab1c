"""Folders of video or image files as datasets, with captions from a ``captions.jsonl`` beside them.

:class:`VideoFolder` gives clips; :class:`ImageFolder` gives single images as one-frame videos
``(3, 1, H, W)`` (for joint image-video training); :class:`FrameFolder` gives clips of videos stored as folders
of frames (SkyTimelapse, Taichi-HD, FaceForensics); :class:`UCF101` the files of an official UCF-101 split list.
Given ``manifest`` (a CSV or JSONL caption manifest, data/manifests.py), a folder's items are the files it lists,
relative paths resolved against the manifest's folder; its rows naming a missing file are skipped as
``missing_file``, rows without a caption as ``no_caption``. Real folders contain broken files. Rather than
crash an hour into training, bad items are skipped and counted in ``dataset.skipped``
(reason -> count):

- ``empty``: a zero-byte file (checked at init, a stat call).
- ``unreadable``: PyAV (videos) or Pillow (images) cannot open or decode it (truncated, not a
  video or image at all, no video stream).
- ``too_short``: fewer than ``(frames - 1) * stride + 1`` frames, the span a clip needs.
- ``bad_caption_line``: a caption line that is not a JSON object with a ``"file"`` string.
- ``unreadable_caption_file``: the caption file exists but cannot be read (a directory, a broken
  link, no permission); the folder is then used without captions.

With ``probe=True`` (default) each file's container header is opened at init, which catches
unreadable files and, where the container records a frame count (mp4, avi), short ones, so
``len()`` counts usable files. Anything a header cannot reveal (a gif or webm that is too short,
a stream corrupt past its header) is caught lazily: ``__getitem__`` counts the reason, marks the
file bad and returns the next usable item instead. Lazy counts live in the process that read
the item (each DataLoader worker has its own); ``bad_items`` (file -> reason) lists what this
process found lazily, so a trainer can merge what its workers found (see training/trainer.py).
A folder with no usable file is a ValueError, at init or when the last usable file turns out bad.
``mark_bad`` takes what another reader found (a latent cache keeps what its encoding skipped).

Caption records are read as they are; ``check_captions`` (called by the run loop with the run's
conditions, before any compute) refuses a label that is not a class of the model or a caption
that is not a string, naming the caption file's line.

A clip starts at frame 0 of its file. With ``random_offset`` it starts at a random frame: drawn
from torch's global RNG at each read, or, given ``offset_seed``, once per file as a pure function
of ``(offset_seed, index)`` (``data.clip_start: random``), so every epoch, resumed run, DataLoader
worker and latent cache reads the same clip of a file.

A clip takes every ``stride``-th frame. With ``strides`` (``data.frame_strides``) each file has its own
stride, drawn from the list as a pure function of ``(stride_seed, its relative path)`` (data/strides.py),
needs ``(frames - 1) * its stride + 1`` frames (else ``too_short``), and its items carry ``stride``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from moviola.data.manifests import read_manifest, resolve
from moviola.data.strides import check_strides, draw_stride
from moviola.data.transforms import SizeLike, resize_and_crop, to_hw
from moviola.video import VideoDecodeError, from_uint8, probe_video, read_video

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".webm", ".avi")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "FrameFolder", "ImageFolder", "UCF101", "VideoFolder", "natural_key",
           "readable_class"]


class _TooShort(Exception):
    pass


class _Unreadable(Exception):
    pass


def _record_problem(record: dict, num_classes: int, text: bool) -> Optional[str]:
    """What makes one caption record unusable for a run with ``num_classes`` classes (and text), or None."""
    label = record.get("label")
    if num_classes and label is not None:
        takes = (f"conditions.num_classes={num_classes} takes an integer 0..{num_classes - 1}, "
                 "or -1 (or no label) for none")
        fix = "fix the label, or set conditions.num_classes to the number of classes in the file"
        if not isinstance(label, int) or isinstance(label, bool):
            return f"label {json.dumps(label)} is not an integer: {takes}; {fix}"
        if not -1 <= label < num_classes:
            return f"label {label} is not a class of this run: {takes}; {fix}"
    caption = record.get("caption")
    if text and caption is not None and not isinstance(caption, str):
        return (f"caption {json.dumps(caption)[:60]} is not a string: a text-conditioned run learns from a "
                "string (no caption, or \"\", trains with the empty prompt); write it as one")
    return None


class _MediaFolder(Dataset):
    """What video and image folders share: captions, skip counting, and the skip-to-next-item loop."""

    root: Path
    files: list[Path]
    skipped: Counter
    skipped_files: dict[str, str]  # files skipped at init: relative path -> reason (the run loop names them)
    captions: dict[str, dict]
    captions_path: Optional[Path] = None  # the caption file read, if one was
    caption_lines: dict[str, int]  # file -> the line of captions.jsonl its record is on (1-based)
    _bad: dict[int, str]
    kind = "file"

    def _find(self, suffixes: tuple[str, ...]) -> list[Path]:
        return sorted(p for p in self.root.rglob("*")
                      if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith("."))

    def _name(self, path: Path) -> str:
        """How items and caption records name ``path``: relative to ``root`` (posix), or absolute if outside it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            pass
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return absolute.as_posix()

    def _load_captions(self, captions: Optional[Union[str, Path]], manifest: bool = False) -> dict[str, dict]:
        """The caption records of ``captions`` (data/manifests.py: JSONL with file|path and caption|text, CSV
        path,text or WebVid's), keyed by :meth:`_name`; relative paths resolve against the file's folder. With
        ``manifest`` the file also lists the items (``self._listed``): a row naming a missing file is skipped as
        ``missing_file``, one without a caption as ``no_caption``; without it the folder is walked and records
        without a caption are fine (labels only)."""
        self.caption_lines = {}
        self._listed: Optional[list[Path]] = None
        if captions is None:
            return {}
        path = Path(captions).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.exists() and not path.is_symlink():
            if manifest:
                raise ValueError(f"caption manifest {str(path)!r} does not exist")
            return {}
        self.captions_path = path
        try:
            rows = read_manifest(path)
        except OSError as e:  # a directory, a dangling link, no permission: go on without captions
            if manifest:
                raise ValueError(f"cannot read caption manifest {str(path)!r} ({type(e).__name__}: {e})") from e
            self.skipped["unreadable_caption_file"] += 1
            warnings.warn(f"cannot read caption file {str(path)!r} ({type(e).__name__}: {e}); "
                          "using the folder without captions", stacklevel=3)
            return {}
        table: dict[str, dict] = {}
        listed: list[Path] = []
        for number, record in rows:
            if record is None or record.get("file") is None:
                self.skipped["bad_caption_line"] += 1
                continue
            target = resolve(path, record["file"])
            name = self._name(target)
            if manifest:
                if not target.exists():
                    self._skip(target, "missing_file")
                    continue
                if not isinstance(record.get("caption"), str) or not record["caption"].strip():
                    self._skip(target, "no_caption")
                    continue
                if name not in table:
                    listed.append(target)
            table[name] = {**record, "file": name}
            self.caption_lines[name] = number
        if manifest:
            self._listed = listed
        return table

    def check_captions(self, num_classes: int = 0, text: bool = False) -> None:
        """Refuse caption records a run cannot use, before any compute (the run loop calls this with its
        ``conditions``): with ``num_classes`` > 0, a ``label`` that is not an int in ``0 .. num_classes-1``
        or -1 (no class; a missing or null label is -1 too); with ``text``, a ``caption`` that is not a
        string. A ValueError naming the caption file, the first bad line and its file, and what to do."""
        bad = [(line, name, problem) for name, line in sorted(self.caption_lines.items(), key=lambda kv: kv[1])
               if (problem := _record_problem(self.captions[name], num_classes, text))]
        if not bad:
            return
        line, name, problem = bad[0]
        more = f" (and {len(bad) - 1} more lines like it)" if len(bad) > 1 else ""
        raise ValueError(f"{self.captions_path} line {line} (file {name!r}): {problem}{more}")

    def _skip(self, path: Path, reason: str) -> None:
        """Count a file found unusable at init, and remember its name."""
        self.skipped[reason] += 1
        self.skipped_files[self._name(path)] = reason

    def __len__(self) -> int:
        return len(self.files)

    @property
    def bad_items(self) -> dict[str, str]:
        """Files this process found unusable while reading (not at init): relative path -> reason."""
        return {self._name(self.files[i]): why for i, why in self._bad.items()}

    def mark_bad(self, items: dict[str, str]) -> None:
        """Take files found unusable when read elsewhere (relative path -> reason; a latent cache keeps what
        its encoding found) as if read here: skipped, counted and in :attr:`bad_items`."""
        index = {self._name(f): i for i, f in enumerate(self.files)}
        for name, reason in items.items():
            i = index.get(name)
            if i is not None and i not in self._bad:
                self.skipped[reason] += 1
                self._bad[i] = reason

    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} {self.kind}s")
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                clip = self._read(i)
            except (VideoDecodeError, _Unreadable, OSError):  # OSError: e.g. deleted since init
                reason = "unreadable"
            except _TooShort:
                reason = "too_short"
            else:
                return self._item(i, clip)
            self.skipped[reason] += 1
            self._bad[i] = reason
        raise ValueError(f"no readable {self.kind} left in {str(self.root)!r}; skipped {dict(self.skipped)}")

    def exact(self, index: int) -> Optional[dict]:
        """The item of exactly file ``index``, or None if it cannot be read (skipped and counted);
        unlike ``dataset[index]`` it never substitutes another file (evaluation reads each once)."""
        if index in self._bad:
            return None
        try:
            return self._item(index, self._read(index))
        except (VideoDecodeError, _Unreadable, OSError):
            reason = "unreadable"
        except _TooShort:
            reason = "too_short"
        self.skipped[reason] += 1
        self._bad[index] = reason
        return None

    def _item(self, i: int, clip: np.ndarray) -> dict:
        video = resize_and_crop(from_uint8(clip), self.size)  # (3, T, H, W) in [-1, 1]
        record = self.captions.get(self._name(self.files[i]), {})
        label = record.get("label", -1)
        if not isinstance(label, int) or isinstance(label, bool) or not -2**63 <= label < 2**63:
            label = -1
        text = record.get("caption", "")
        return {
            "video": video,
            "label": torch.tensor(label, dtype=torch.int64),
            "caption": text if isinstance(text, str) else "",
        }


class VideoFolder(_MediaFolder):
    """Clips of ``frames`` frames every ``stride`` frames, resized and center-cropped to ``size``.

    Items are ``dict(video (3,T,H,W) float32 in [-1,1], label int64, caption str)``, the same as
    :class:`moviola.data.shapes.MovingShapes`. ``caption`` is ``""`` and ``label`` is -1 when the
    caption file has no entry for the file. Files are found recursively and sorted, so indices
    are stable; caption entries name files by their path relative to ``root``. With ``strides`` each
    file's clip is at its own stride (module docstring) and items also carry ``stride`` (int).
    """

    kind = "video"

    def __init__(
        self,
        root: Union[str, Path],
        frames: int = 16,
        stride: int = 1,
        size: SizeLike = 32,
        captions: Optional[Union[str, Path]] = "captions.jsonl",
        random_offset: bool = False,
        probe: bool = True,
        offset_seed: Optional[int] = None,
        strides: Optional[Sequence[int]] = None,
        stride_seed: int = 0,
        manifest: Optional[Union[str, Path]] = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.kind} folder {str(self.root)!r} does not exist or is not a directory")
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be a positive int, got {frames!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.frames, self.stride, self.size = frames, stride, to_hw(size)
        self.strides, self.stride_seed = check_strides(strides), int(stride_seed)
        self.span = (frames - 1) * stride + 1  # source frames one clip covers (at its own stride with strides)
        self.random_offset = bool(random_offset)
        self.offset_seed = offset_seed
        self.skipped: Counter[str] = Counter()
        self.skipped_files: dict[str, str] = {}
        self.captions = (self._load_captions(manifest, manifest=True) if manifest is not None
                         else self._load_captions(captions))

        candidates = self._listed if self._listed is not None else self._candidates()
        self.files: list[Path] = []
        self._lengths: list[Optional[int]] = []  # frame count from the header, None if unknown
        for path in candidates:
            if self._empty(path):
                self._skip(path, "empty")
                continue
            length = None
            if probe:
                try:
                    length = self._length(path)
                except (VideoDecodeError, _Unreadable, OSError):
                    self._skip(path, "unreadable")
                    continue
                if length is not None and length < self._span(path):
                    self._skip(path, "too_short")
                    continue
            self.files.append(path)
            self._lengths.append(length)
        if not self.files:
            need = (f"{self.span} frames each" if self.strides is None else
                    f"(frames - 1) * stride + 1 frames each at its stride, {min(self.strides)} .. {max(self.strides)}")
            raise ValueError(
                f"no usable {self.kind} in {str(self.root)!r}: {len(candidates)} {self._what}, "
                f"skipped {dict(self.skipped)} (need {need})"
            )
        self._bad: dict[int, str] = {}  # index -> reason, found while reading

    _what = f"files with suffixes {', '.join(VIDEO_SUFFIXES)}"

    def _candidates(self) -> list[Path]:
        """The items a walk of ``root`` finds (without a manifest)."""
        return self._find(VIDEO_SUFFIXES)

    def _empty(self, path: Path) -> bool:
        return path.stat().st_size == 0

    def _length(self, path: Path) -> Optional[int]:
        """The item's frame count read cheaply at init (None if unknown); raises if it cannot be read."""
        return probe_video(path)["frames"]

    def _stride_of_path(self, path: Path) -> int:
        if self.strides is None:
            return self.stride
        name = zlib.crc32(self._name(path).encode())  # the file, not its index (as _offset)
        return draw_stride(self.strides, self.stride_seed, name)

    def _span(self, path: Path) -> int:
        return (self.frames - 1) * self._stride_of_path(path) + 1

    def stride_of(self, i: int) -> int:
        """File ``i``'s frame stride: drawn from ``strides`` by ``(stride_seed, its relative path)``, else ``stride``."""
        return self._stride_of_path(self.files[i])

    def _offset(self, i: int, length: int) -> int:
        """The first frame of file ``i``'s clip, in a file of ``length`` frames."""
        span = self._span(self.files[i])
        if not self.random_offset or length <= span:
            return 0
        if self.offset_seed is not None:  # a pure function of (offset_seed, the file): every epoch, run and worker agree
            name = zlib.crc32(self._name(self.files[i]).encode())  # not i: files may come and go
            return int(np.random.default_rng([self.offset_seed, name]).integers(0, length - span + 1))
        # torch's RNG: seeded by torch.manual_seed and distinct per DataLoader worker
        return int(torch.randint(0, length - span + 1, ()).item())

    def _read(self, i: int) -> np.ndarray:
        path, length = self.files[i], self._lengths[i]
        stride, span = self.stride_of(i), self._span(path)
        if not (self.random_offset and length is None):
            start = self._offset(i, length or 0)
            clip = read_video(path, stride=stride, max_frames=self.frames, start=start)
            if len(clip) == self.frames:
                return clip
            if start == 0:
                raise _TooShort
            # the header counted more frames than decode: pick the window in the frames there are
        every = read_video(path)  # length unknown: decode all once, then pick the window
        if len(every) < span:
            raise _TooShort
        start = self._offset(i, len(every))
        return every[start : start + span : stride]

    def _item(self, i: int, clip: np.ndarray) -> dict:
        item = super()._item(i, clip)
        if self.strides is not None:  # the clip's own stride (its frame rate is data.fps / stride)
            item["stride"] = self.stride_of(i)
        return item


class ImageFolder(_MediaFolder):
    """Images (png, jpg, webp, bmp) as one-frame videos: items ``dict(video (3,1,H,W), label, caption)``.

    The same contract as :class:`VideoFolder` (resize the shorter side, center crop to ``size``,
    captions from ``captions.jsonl``, bad files skipped and counted), so image and video
    datasets can be mixed for joint training. ``probe=True`` opens each header at init (Pillow's
    ``verify``), which catches files that are not images; a file corrupt past its header is
    caught when read.
    """

    kind = "image"

    def __init__(self, root: Union[str, Path], size: SizeLike = 32,
                 captions: Optional[Union[str, Path]] = "captions.jsonl", probe: bool = True,
                 manifest: Optional[Union[str, Path]] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(self.root)!r} does not exist or is not a directory")
        self.size = to_hw(size)
        self.skipped: Counter[str] = Counter()
        self.skipped_files: dict[str, str] = {}
        self.captions = (self._load_captions(manifest, manifest=True) if manifest is not None
                         else self._load_captions(captions))
        candidates = self._listed if self._listed is not None else self._find(IMAGE_SUFFIXES)
        self.files: list[Path] = []
        for path in candidates:
            if path.stat().st_size == 0:
                self._skip(path, "empty")
                continue
            if probe:
                try:
                    self._open(path, verify=True)
                except _Unreadable:
                    self._skip(path, "unreadable")
                    continue
            self.files.append(path)
        if not self.files:
            raise ValueError(f"no usable image in {str(self.root)!r}: {len(candidates)} files with suffixes "
                             f"{', '.join(IMAGE_SUFFIXES)}, skipped {dict(self.skipped)}")
        self._bad: dict[int, str] = {}

    @staticmethod
    def _open(path: Path, verify: bool = False) -> Optional[np.ndarray]:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad file
                with Image.open(path) as img:
                    if verify:
                        img.verify()
                        return None
                    return np.array(img.convert("RGB"))  # a writable copy
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise _Unreadable(f"{type(e).__name__}: {e}") from e

    def _read(self, i: int) -> np.ndarray:
        return self._open(self.files[i])[None]  # (H, W, 3) -> (1, H, W, 3): a one-frame video


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: ``frame2.png`` before ``frame10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class FrameFolder(VideoFolder):
    """Videos stored as folders of frames (SkyTimelapse, Taichi-HD, FaceForensics preprocessed): each folder
    that directly holds image files (png, jpg, ...) is one video, its frames in natural order (``2.png`` before
    ``10.png``), found at any depth (``video_0001/00001.png``, SkyTimelapse's ``sky_train/<id>/<clip>/*.jpg``).

    Clips, strides, sizes, offsets, captions (keyed by the folder's path relative to ``root``) and bad-item
    skipping are :class:`VideoFolder`'s: a folder with fewer frames than a clip spans is ``too_short`` at init,
    a listed folder with no frame is ``empty``, a frame that does not decode (or frames of different sizes)
    makes the folder ``unreadable`` when read."""

    kind = "frame folder"
    _what = f"folders of frames with suffixes {', '.join(IMAGE_SUFFIXES)}"

    def _frames(self, path: Path) -> list[Path]:
        cache = self.__dict__.setdefault("_frame_lists", {})
        if path not in cache:
            if not path.is_dir():
                raise _Unreadable(f"{path} is not a folder")
            cache[path] = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                                  and not p.name.startswith(".") and p.is_file()), key=lambda p: natural_key(p.name))
        return cache[path]

    def _candidates(self) -> list[Path]:
        folders = {p.parent for p in self.root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()}
        return sorted(folders, key=lambda p: natural_key(self._name(p)))

    def _empty(self, path: Path) -> bool:
        try:
            return not self._frames(path)
        except _Unreadable:
            return False  # not a folder: probing finds it unreadable

    def _length(self, path: Path) -> Optional[int]:
        return len(self._frames(path))

    def _read(self, i: int) -> np.ndarray:
        frames = self._frames(self.files[i])
        stride, span = self.stride_of(i), self._span(self.files[i])
        if len(frames) < span:
            raise _TooShort
        start = self._offset(i, len(frames))
        picked = [ImageFolder._open(p) for p in frames[start : start + span : stride]]
        if len({f.shape for f in picked}) != 1:
            raise _Unreadable(f"frames of different sizes in {self.files[i]}")
        return np.stack(picked)


def readable_class(name: str) -> str:
    """A CamelCase class name as words: ``ApplyEyeMakeup`` -> ``apply eye makeup``, ``YoYo`` -> ``yo yo``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|_", " ", name)
    return " ".join(words.lower().split())


class UCF101(VideoFolder):
    """UCF-101 in its official layout: ``root`` holds the class folders (``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi``)
    and the items are the files one official split list names.

    The list is ``split_file`` (a path, relative to ``root`` unless absolute), else ``<split>list0<fold>.txt``
    (``trainlist01.txt`` .. ``testlist03.txt``) in ``root/ucfTrainTestlist``, ``root/../ucfTrainTestlist`` or
    ``root``. Train lines are ``<class>/<file> <1-based label>``, test lines ``<class>/<file>``. Labels come from
    ``classInd.txt`` beside the list (``1 ApplyEyeMakeup`` is label 0), by each file's class folder; the caption is
    the class name in words (``apply eye makeup``). A listed file that is missing is skipped as ``missing_file``,
    a line whose class is not in classInd.txt as ``bad_caption_line``. ``classes``: the class names by label.
    """

    kind = "UCF-101 video"

    def __init__(self, root: Union[str, Path], split: str = "train", fold: int = 1,
                 split_file: Optional[Union[str, Path]] = None, **kwargs) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"UCF-101 split must be train or test, got {split!r}")
        if fold not in (1, 2, 3):
            raise ValueError(f"UCF-101 has official splits 1, 2 and 3, got {fold!r}")
        self._split, self._fold, self._split_file = split, fold, split_file
        kwargs.pop("captions", None)
        kwargs.pop("manifest", None)
        super().__init__(root, captions="<split list>", **kwargs)

    def _find_list(self) -> Path:
        root = Path(self.root)
        if self._split_file is not None:
            path = Path(self._split_file).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise ValueError(f"UCF-101 split file {str(path)!r} does not exist")
            return path
        name = f"{self._split}list0{self._fold}.txt"
        places = [root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist", root]
        for place in places:
            if (place / name).is_file():
                return place / name
        raise ValueError(f"no UCF-101 split list {name} in {', '.join(str(p) for p in places)}: give its path as "
                         "data.split_file")

    def _load_captions(self, captions, manifest: bool = False) -> dict[str, dict]:
        self.caption_lines = {}
        listing = self._find_list()
        index_file = listing.parent / "classInd.txt"
        if not index_file.is_file():
            raise ValueError(f"UCF-101: no classInd.txt beside {listing} (lines like '1 ApplyEyeMakeup')")
        by_number: dict[int, str] = {}
        for line in index_file.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                by_number[int(parts[0])] = parts[1]
        if not by_number or sorted(by_number) != list(range(1, len(by_number) + 1)):
            raise ValueError(f"{index_file}: class numbers must run 1..N, one '<number> <ClassName>' a line")
        self.classes = [by_number[k] for k in range(1, len(by_number) + 1)]
        label_of = {c.lower(): k for k, c in enumerate(self.classes)}
        self.captions_path = listing
        table: dict[str, dict] = {}
        listed: list[Path] = []
        for number, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            rel = PurePosixPath(parts[0].replace("\\", "/"))
            label = label_of.get(rel.parts[0].lower()) if len(rel.parts) > 1 else None
            target = Path(os.path.normpath(self.root / rel))
            if label is None:
                self.skipped["bad_caption_line"] += 1
                continue
            if not target.exists():
                self._skip(target, "missing_file")
                continue
            name = self._name(target)
            if name not in table:
                listed.append(target)
            table[name] = {"file": name, "label": label, "caption": readable_class(self.classes[label])}
            self.caption_lines[name] = number
        self._listed = listed
        return table
