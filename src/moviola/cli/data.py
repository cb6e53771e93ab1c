"""``moviola data``: write datasets to disk (Moving Shapes clips plus captions)."""
from __future__ import annotations

import argparse


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="datasets")
    dsub = d.add_subparsers(dest="dataset", required=True)
    ds = dsub.add_parser("shapes", help="write Moving Shapes clips as mp4 files plus captions.jsonl")
    ds.add_argument("--out", required=True)
    ds.add_argument("--split", choices=["train", "test"], default="train")
    ds.add_argument("--count", type=int, default=480)
    ds.add_argument("--size", type=int, default=32, choices=[32, 64, 128, 256])
    ds.add_argument("--frames", type=int, default=16)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--bounce", action="store_true")
    ds.set_defaults(fn=_cmd_data_shapes)


def _cmd_data_shapes(args: argparse.Namespace) -> int:
    from moviola.data.shapes import write_shapes_folder

    if args.count <= 0:
        raise ValueError("--count must be at least 1")
    write_shapes_folder(args.out, split=args.split, count=args.count, size=args.size, frames=args.frames,
                        seed=args.seed, bounce=args.bounce)
    print(f"wrote {args.count} {args.split} clips and captions.jsonl to {args.out}")
    return 0
