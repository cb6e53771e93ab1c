"""Small files written whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to a temporary name beside ``path`` and rename it into place: a crash leaves the previous
    file (or none), never half of one. OSError propagates; the caller decides whether it ends the run."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
