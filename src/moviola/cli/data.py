"""``moviola data``: write datasets to disk (Moving Shapes clips plus captions)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from moviola.cli.common import check_output, writing


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    ds = dsub.add_parser("shapes", help="write Moving Shapes clips as mp4 files plus captions.jsonl")
    ds.add_argument("--out", required=True, help="the folder to write (created; clips 000000.mp4 ... and captions.jsonl)")
    ds.add_argument("--split", choices=["train", "test"], default="train",
                    help="test holds the compositional hold-out combinations")
    ds.add_argument("--count", type=int, default=480, help="clips to write")
    ds.add_argument("--size", type=int, default=32, choices=[32, 64, 128, 256], help="frame size in pixels")
    ds.add_argument("--frames", type=int, default=16, help="frames per clip")
    ds.add_argument("--seed", type=int, default=0, help="seed of the clips (the same seed gives the same clips)")
    ds.add_argument("--bounce", action="store_true", help="objects bounce off the edges (for clips longer than one "
                                                          "crossing)")
    ds.add_argument("--overwrite", action="store_true", help="replace a captions.jsonl and clips 000000.mp4 ... "
                                                             "already in --out (refused without it)")
    ds.set_defaults(fn=_cmd_data_shapes)


def _cmd_data_shapes(args: argparse.Namespace) -> int:
    from moviola.data.shapes import write_shapes_folder

    if args.count <= 0:
        raise ValueError("--count must be at least 1")
    check_output(args.out, "--out", directory=True)
    if not args.overwrite:
        _refuse_overwrite(Path(args.out), args.count)
    with writing(args.out, "--out"):
        write_shapes_folder(args.out, split=args.split, count=args.count, size=args.size, frames=args.frames,
                            seed=args.seed, bounce=args.bounce)
    print(f"wrote {args.count} {args.split} clips and captions.jsonl to {args.out}")
    return 0


def _refuse_overwrite(out: Path, count: int) -> None:
    """The files ``write_shapes_folder`` would replace (captions.jsonl, 000000.mp4 ...): refused, named."""
    names = ["captions.jsonl", *(f"{i:06d}.mp4" for i in range(count))]
    there = [name for name in names if os.path.lexists(out / name)]
    if not there:
        return
    shown = ", ".join(there[:3]) + (f" and {len(there) - 3} more" if len(there) > 3 else "")
    raise ValueError(f"--out {out}: would overwrite {shown} already there: give another --out (then append "
                     "its captions.jsonl lines to yours), or pass --overwrite to replace them")
