"""``moviola`` command line: the only place that parses arguments.

Every user error (bad config key or type, impossible shape, missing file) ends as one line
``moviola: error: ...`` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 IsADirectoryError, PermissionError)


def _cmd_train(args: argparse.Namespace) -> int:
    from moviola.config import load_config
    from moviola.training.trainer import Trainer

    overrides = list(args.set or [])
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume and run_dir is not None and (run_dir / "config.json").is_file() and args.config is None:
        cfg = load_config(run_dir / "config.json", overrides)
    else:
        if args.config is None:
            raise ValueError("train needs a CONFIG file (or --resume --run-dir DIR of an existing run)")
        cfg = load_config(args.config, overrides)
    run_dir = run_dir or Path("runs") / cfg.name
    last = Trainer(cfg, run_dir, resume=args.resume, quiet=args.quiet).train()
    print(json.dumps({"run_dir": str(run_dir), **{k: v for k, v in last.items() if k != "time"}}))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import moviola
    from moviola.video import save_video, save_video_grid

    if args.num_videos <= 0:
        raise ValueError("--num-videos must be at least 1")
    if args.out is None and args.out_dir is None:
        raise ValueError("give --out FILE (.mp4, .gif or .png) or --out-dir DIR")
    if args.out is not None and Path(args.out).suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {args.out}: the suffix must be .mp4, .gif or .png")
    pipe = moviola.load_pipeline(args.checkpoint, weights=args.weights, device=args.device)
    labels = None
    if args.label:
        labels = [y for y in args.label for _ in range(args.num_videos)]
    elif "labels" in getattr(pipe.model, "accepts", ()):
        labels = [i % pipe.model.num_classes for i in range(args.num_videos)]
    video = pipe(labels=labels, num_videos=args.num_videos, num_frames=args.frames, height=args.size,
                 width=args.size, steps=args.steps, sampler=args.sampler, cfg=args.cfg, eta=args.eta,
                 seed=args.seed, progress=not args.quiet)
    fps = args.fps
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "manifest.jsonl", "w") as f:
            for i, v in enumerate(video):
                name = f"{i:05d}.{args.format}"
                save_video(v, out_dir / name, fps=fps)
                row = {"file": name, "seed": args.seed + i}
                if labels is not None:
                    row["label"] = labels[i]
                    row.update(_label_caption(pipe, labels[i]))
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(video)} videos and manifest.jsonl to {out_dir}")
    if args.out:
        if len(video) == 1:
            save_video(video[0], args.out, fps=fps)
        else:
            save_video_grid(video, args.out, fps=fps)
        print(f"wrote {args.out} ({len(video)} video{'s' if len(video) > 1 else ''}, "
              f"{video.shape[2]} frames of {video.shape[3]}×{video.shape[4]})")
    return 0


def _label_caption(pipe, label: int) -> dict:
    if pipe.config.data.dataset == "shapes" and pipe.model.num_classes == 48 and label >= 0:
        from moviola.data.shapes import caption, label_to_attributes

        colour, shape, direction = label_to_attributes(label)
        return {"caption": caption(colour, shape, direction), "colour": colour, "shape": shape,
                "direction": direction}
    return {}


def _cmd_data_shapes(args: argparse.Namespace) -> int:
    from moviola.data.shapes import write_shapes_folder

    if args.count <= 0:
        raise ValueError("--count must be at least 1")
    write_shapes_folder(args.out, split=args.split, count=args.count, size=args.size, frames=args.frames,
                        seed=args.seed, bounce=args.bounce)
    print(f"wrote {args.count} {args.split} clips and captions.jsonl to {args.out}")
    return 0


def _cmd_eval_shapes(args: argparse.Namespace) -> int:
    from moviola.eval.shapes_eval import evaluate_checkpoint, evaluate_folder, write_rows_csv

    if (args.checkpoint is None) == (args.videos is None):
        raise ValueError("give exactly one of --checkpoint (sample and score) or --videos DIR (score files)")
    if args.checkpoint is not None:
        if args.per_class <= 0:
            raise ValueError("--per-class must be at least 1")
        result = evaluate_checkpoint(args.checkpoint, per_class=args.per_class, steps=args.steps, cfg=args.cfg,
                                     sampler=args.sampler, seed=args.seed, device=args.device)
    else:
        result = evaluate_folder(args.videos)
    rows = result.pop("rows")
    if args.csv:
        write_rows_csv(rows, args.csv)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moviola", description="Latent video diffusion: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a denoiser from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config (e.g. configs/shapes/latte-tiny.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=3e-4")
    t.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="shorthand for --set train.precision=...")
    t.add_argument("--steps", type=int, help="shorthand for --set train.steps=...")
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=_cmd_train)

    s = sub.add_parser("sample", help="generate videos from a checkpoint or run directory")
    s.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    s.add_argument("--label", type=int, action="append", help="class label (repeatable)")
    s.add_argument("--num-videos", type=int, default=1, help="videos per label (or in all, without labels)")
    s.add_argument("--sampler", choices=["ddim", "ddpm"])
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--frames", type=int, help="frames to generate (default: the training count)")
    s.add_argument("--size", type=int, help="frame size in pixels (default: the training size)")
    s.add_argument("--fps", type=int, default=8)
    s.add_argument("--out", help="output file: .mp4, .gif, or .png (a grid of all videos)")
    s.add_argument("--out-dir", help="write one file per video plus manifest.jsonl here")
    s.add_argument("--format", choices=["mp4", "gif", "png"], default="mp4", help="file type for --out-dir")
    s.add_argument("--weights", choices=["ema", "model"], default="ema")
    s.add_argument("--device", default=None)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=_cmd_sample)

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

    e = sub.add_parser("eval", help="evaluate generated videos")
    esub = e.add_subparsers(dest="metric", required=True)
    es = esub.add_parser("shapes", help="Moving Shapes colour/shape/direction accuracy, per split")
    es.add_argument("--checkpoint", help="a class-conditional Moving Shapes checkpoint: sample every class and score")
    es.add_argument("--videos", help="a folder with manifest.jsonl or captions.jsonl: score its files")
    es.add_argument("--per-class", type=int, default=1)
    es.add_argument("--steps", type=int, default=50)
    es.add_argument("--cfg", type=float)
    es.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--device", default=None)
    es.add_argument("--csv", help="write one row per video here")
    es.add_argument("--json", help="write the summary here")
    es.set_defaults(fn=_cmd_eval_shapes)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"moviola: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from moviola.training.trainer import TrainingDiverged  # already imported if it was raised

        if not isinstance(e, TrainingDiverged):
            raise
        print(f"moviola: error: {e}", file=sys.stderr)  # a diverged run: a message, not a traceback
        return 1
    except KeyboardInterrupt:
        print("moviola: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
