"""``moviola`` command line: the only place that parses arguments.

Every user error (bad config key or type, impossible shape, missing file, a bad argument) ends
as one line ``moviola: error: ...`` on stderr and exit code 2, never a traceback, and ``train``
leaves no run directory behind. Exit codes: 0 done, 1 a run that stopped on a fault (diverged,
checkpoints not writable, another OS error), 2 a user error, 130 / 143 stopped by SIGINT / SIGTERM
after writing a checkpoint (resume with ``--resume``), 141 (128 + SIGPIPE) when the reader of the
output went away (``moviola eval-vae ... | head``): the command ends quietly, with the code a shell
reports for a Unix tool stopped by a closed pipe, so ``set -o pipefail`` still sees that the output
was cut short.

One module per command group builds its subcommands and runs them: ``train`` (train, train-vae,
export, study), ``sample``, ``data``, ``evaluate`` (eval *, eval-vae), ``convert``,
``demo`` (the web page); this module assembles the parser and turns what a command raises into an exit code.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from moviola.cli import cascade, convert, data, demo, evaluate, train
from moviola.cli.common import USER_ERRORS, Parser, one_line

__all__ = ["USER_ERRORS", "build_parser", "main"]

# the order `moviola --help` lists the commands in
_COMMANDS = (train.add_train_parsers, evaluate.add_eval_vae_parser, cascade.add_sample_parser,
             train.add_export_parser, convert.add_convert_parser, data.add_data_parser,
             evaluate.add_eval_parser, train.add_study_parser, demo.add_demo_parser)


def build_parser() -> argparse.ArgumentParser:
    from moviola import __version__

    p = Parser(prog="moviola", description="Latent video diffusion: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"moviola {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the CLI read like its errors: one line, no source location (above a progress bar, if one runs)."""
    from tqdm import tqdm

    tqdm.write(f"moviola: warning: {one_line(str(message))}", file=sys.stderr if file is None else file)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone (poll reports an error on its write end); True where
    that cannot be told (no poll, no file descriptor)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _quiet_exit() -> int:
    """End after a closed stdout: point it at /dev/null, so the flush at exit cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    return 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not as an "Exception ignored" at interpreter exit
        return code
    except BrokenPipeError as e:
        if _stdout_closed():
            return _quiet_exit()
        print(f"moviola: error: {e}", file=sys.stderr)  # another pipe (a subprocess's): a fault like OSError's
        return 1
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"moviola: error: {one_line(msg)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("moviola: error: out of memory (ask for fewer or smaller videos, or a smaller batch)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from moviola.training.trainer import CheckpointWriteFailed, TrainingDiverged  # already imported if raised

        if "out of memory" in str(e) or "can't allocate memory" in str(e):  # torch's CPU and CUDA allocators
            print(f"moviola: error: out of memory (ask for fewer or smaller videos, or a smaller batch): "
                  f"{one_line(str(e).strip().splitlines()[0])}", file=sys.stderr)
            return 1
        if not isinstance(e, (TrainingDiverged, CheckpointWriteFailed)):
            raise
        print(f"moviola: error: {e}", file=sys.stderr)  # a run stopped on a fault: a message, not a traceback
        return 1
    except OSError as e:  # disk full, I/O error, ...: the system's fault, not the user's input
        print(f"moviola: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moviola: interrupted", file=sys.stderr)
        return 130
