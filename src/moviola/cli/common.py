"""What every command group shares: the user-error types, the one-line error format, number checks."""
from __future__ import annotations

import argparse
import math

# a user's mistake (bad key, missing file, impossible shape): one line on stderr and exit code 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 IsADirectoryError, PermissionError)


def one_line(message: str) -> str:
    """Escape control characters (newlines, \\x1e, ...) an argument may carry: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other moviola error (subparsers inherit it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"moviola: error: {one_line(message)} (see: {self.prog} --help)\n")


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
