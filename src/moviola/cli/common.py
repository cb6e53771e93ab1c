"""What every command group shares: the user-error types, the one-line error format, number checks."""
from __future__ import annotations

import argparse
import codecs
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

# a user's mistake (bad key, missing file, impossible shape): one line on stderr and exit code 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 IsADirectoryError, PermissionError)


def one_line(message: str) -> str:
    """Escape control characters (newlines, \\x1e, ...) an argument may carry: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default, where it has one and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        if text.endswith(")"):  # "videos per class (48 classes; default: 1)", not two parentheses in a row
            return f"{text[:-1]}; default: %(default)s)"
        return f"{text} (default: %(default)s)"


class _Once(argparse._StoreAction):
    """A single-value option: given twice is an error, never "the last one wins" (repeatable options use
    action="append")."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        given = getattr(parser, "_given", None)
        if self.option_strings and given is not None:
            if self.dest in given:
                first, first_value = given[self.dest]
                parser.error(f"{option_string} given twice ({first} {first_value}, then {option_string} {values}): "
                             "give it once")
            given[self.dest] = (option_string, values)
        setattr(namespace, self.dest, values)


class Given(_Once):
    """A single-value option whose presence is recorded in ``args.given`` (a set of dests): a command can tell a
    flag given at its default from one not given (a cascade file keeps its own --seed and --num-videos)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        super().__call__(parser, namespace, values, option_string)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other moviola error, defaults in ``--help`` and
    single-value options that refuse to be given twice (subparsers inherit all three)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._given: dict[str, tuple] = {}  # option -> (the flag used, its value), for this parse
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"moviola: error: {one_line(message)} (see: {self.prog} --help)\n")


def check_output(path: Optional[str], flag: str, directory: bool = False, parents: bool = True) -> None:
    """An output path, before any compute: a file output is not a directory, a directory output not a file,
    and the nearest existing directory on the way is one this user may write in (the parent itself, unless
    the command creates missing ``parents``). Every error names the path."""
    if path is None:
        return
    p = Path(path)
    label = f"{flag} {p}" if flag else str(p)
    if p.is_dir() and not directory:
        raise ValueError(f"{label}: {p} is a directory: give a file name")
    if p.exists() and not p.is_dir() and directory:
        raise ValueError(f"{label}: {p} is a file, not a directory")
    base = p if p.exists() else p.parent
    while not base.exists() and base != base.parent:  # a dangling symlink counts as missing
        base = base.parent
    if base.exists() and not base.is_dir():
        raise ValueError(f"{label}: {base} is a file, not a directory")
    if not parents and not p.parent.is_dir():
        raise FileNotFoundError(f"{label}: the folder {p.parent} does not exist (create it first)")
    for target in (p, base) if p.exists() else (base,):
        if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
            raise ValueError(f"{label}: {target} is not writable (permission denied): choose another path")


def check_text_file(path: Optional[str], what: str) -> None:
    """A YAML (or other text) file the command reads: a directory or a binary file (an image given as the
    config) is one line naming it, not a decoder's error about a byte."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        return  # the reader says it is missing
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise ValueError(f"{what} {p} is not a text file (not UTF-8): give a YAML file") from None


@contextmanager
def writing(path, flag: str = ""):
    """Name ``path`` in an error writing it (a codec or OS error may not): the same error type, so a user's
    mistake (no permission, not a directory) still exits 2 and a full disk 1."""
    try:
        yield
    except OSError as e:
        if str(path) in str(e):
            raise
        label = f"{flag} {path}" if flag else str(path)
        kind = next((c for c in (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                 FileExistsError) if isinstance(e, c)), OSError)  # a builtin: PyAV's take other arguments
        error = kind(f"{label}: cannot write it: {e.strerror or e}")
        error.errno = e.errno
        raise error from e


def check_numbers(args: argparse.Namespace) -> None:
    """Sampling arguments argparse types but does not range-check (NaN guidance, zero frames, ...)."""
    for name in ("cfg", "eta"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}")
    if getattr(args, "eta", None) is not None and args.eta < 0:
        raise ValueError(f"--eta must be 0 or more, got {args.eta}")
    for name in ("steps", "frames", "size", "fps"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be at least 1, got {value}")
