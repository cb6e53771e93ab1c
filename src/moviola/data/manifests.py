"""Caption manifests in the layouts people already have, read into one record shape.

Every row becomes ``(line, record)`` with ``record = {"file": <path as written, or None>, "caption": ..., ...}``
(other fields, e.g. ``label``, kept as they are); ``file`` is None for a row that names no file. Supported:

- ``*.jsonl`` (and ``*.json`` lines): one JSON object a line with ``file`` or ``path`` and ``caption`` or
  ``text`` (moviola's ``captions.jsonl``, Open-Sora-style JSONL). A line that is not a JSON object gives
  ``None`` as its record.
- ``*.csv`` with a header: the file in ``path`` or ``file`` (Open-Sora: ``path,text``), else WebVid's
  ``page_dir`` + ``videoid`` (the file ``<page_dir>/<videoid>.<mp4|webm|avi|gif>``, the first that exists, as
  WebVid download scripts save them), else ``videoid`` alone (``<videoid>.<suffix>``); the caption in ``text``,
  ``caption`` or ``name`` (WebVid); a ``label`` column is read as an int.

Paths are as written; :func:`resolve` makes a relative one relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["CAPTION_KEYS", "FILE_KEYS", "read_manifest", "resolve"]

FILE_KEYS = ("file", "path")
CAPTION_KEYS = ("caption", "text", "name")
_WEBVID_SUFFIXES = (".mp4", ".webm", ".avi", ".gif")


def resolve(manifest: Union[str, Path], name: str) -> Path:
    """``name`` (as a manifest writes it) as a path: relative names are relative to the manifest's folder."""
    p = Path(name).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else Path(manifest).parent / p))


def _normalize(row: dict, caption_keys: tuple[str, ...] = ("text",)) -> dict:
    record = dict(row)
    name = next((row[k] for k in FILE_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
    for k in FILE_KEYS:
        record.pop(k, None)
    record["file"] = name
    if "caption" not in row:
        text = next((row[k] for k in caption_keys if k in row), None)
        if text is not None:
            record["caption"] = text
    return record


def _csv_rows(text: str, folder: Path) -> list[tuple[int, Optional[dict]]]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames:
        reader.fieldnames = [f.strip().lower() for f in reader.fieldnames]
    out = []
    for row in reader:
        line = reader.line_num
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
        if not any(row.values()):
            continue
        if not row.get("path") and not row.get("file") and row.get("videoid"):  # WebVid
            stem = Path(row.get("page_dir") or "") / row["videoid"]
            found = next((stem.with_name(stem.name + s) for s in _WEBVID_SUFFIXES
                          if resolve(folder / "x", str(stem) + s).exists()), None)
            row["path"] = str(found if found is not None else stem.with_name(stem.name + ".mp4"))
        if row.get("label") not in (None, ""):
            try:
                row["label"] = int(row["label"])
            except ValueError:
                pass  # left as written: check_captions names it
        else:
            row.pop("label", None)
        for k in CAPTION_KEYS:
            if row.get(k) == "":
                row.pop(k)  # an empty cell is no caption
        out.append((line, _normalize(row, CAPTION_KEYS[1:])))
    return out


def read_manifest(path: Union[str, Path]) -> list[tuple[int, Optional[dict]]]:
    """The rows of a manifest (module docstring): ``(line, record or None)``, 1-based line numbers.
    OSError if it cannot be read."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        return _csv_rows(text, path.parent)
    out: list[tuple[int, Optional[dict]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            out.append((number, None))
            continue
        out.append((number, _normalize(row) if isinstance(row, dict) else None))
    return out
