"""``moviola sample CASCADE.yaml`` (a cascade file in place of a checkpoint: pipelines/cascade.py) and ``moviola
sample CKPT --interpolate 4|16 --video IN.mp4`` (pipelines/interpolate.py).

A cascade takes its models, stages and sampling settings from its file; the command line gives what a call
of ``run_cascade`` may replace: ``--prompt`` / ``--prompts-file`` / ``--label``, ``--negative-prompt``,
``--num-videos`` (videos per prompt or label), ``--seed``, ``--frames`` (the base's length) and ``--long`` with
its options (the base made long). Not given, each keeps the file's value. Flags that are a stage's setting
(``--steps``, ``--cfg``, ``--upsample``, ...) are refused: they belong in the file. One progress bar runs over
the whole chain. The files are written at the cascade's frame rate (the base's times each interpolation factor),
or ``--fps``.

``--interpolate N --video IN.mp4`` keeps IN.mp4's frames as keyframes and generates the frames between them
with the checkpoint (a keyframes model): N = 4 gives 4T − 3 frames, N = 16 (two levels) 16T − 15;
``--interpolate-level 2`` runs the second level alone (N = 4). The video is an input, never sampled first: to
interpolate a sampled video, write a cascade. ``--fps`` is only the written file's rate here (the level sets the
model's frame-rate flag); by default IN.mp4's rate times N, so the video lasts as long as IN.mp4.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from moviola.cli import sample
from moviola.cli.common import writing

CASCADE_SUFFIXES = (".yaml", ".yml")
# flags a cascade takes from its file, each with the value that means "not given"
STAGE_FLAGS = (("--image", "image", None), ("--upsample", "upsample", None), ("--noise-level", "noise_level", None),
               ("--sampler", "sampler", None), ("--steps", "steps", None), ("--cfg", "cfg", None),
               ("--eta", "eta", None), ("--size", "size", None), ("--context-guidance", "context_guidance", 1.0),
               ("--temporal-guidance", "temporal_guidance", 0.0), ("--interpolate", "interpolate", None),
               ("--video", "video", None), ("--interpolate-level", "interpolate_level", None))
# flags --interpolate has no use for
NOT_WITH_INTERPOLATE = (("--image", "image", None), ("--upsample", "upsample", None),
                        ("--noise-level", "noise_level", None), ("--long", "long", None), ("--frames", "frames", None),
                        ("--size", "size", None))


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--interpolate", type=int, choices=[4, 16], metavar="4|16",
                   help="with --video: keep its frames as keyframes and generate the frames between them with this "
                        "checkpoint (a model trained with conditions.context_mode: keyframes): 4 gives 4T - 3 frames, "
                        "16 (two levels) 16T - 15")
    s.add_argument("--video", metavar="IN", help="with --interpolate: the video file to interpolate")
    s.add_argument("--interpolate-level", type=int, choices=[1, 2], metavar="1|2",
                   help="with --interpolate 4: run level 1 (T -> 4T, the default) or level 2 (4T -> 16T) of a model "
                        "trained on both (its frame-rate flag, conditions.fps)")


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    """``moviola sample`` (cli/sample.py) with a cascade file in place of the checkpoint and ``--interpolate``."""
    sample.add_sample_parser(sub)
    s = sub.choices["sample"]
    add_arguments(s)
    s.set_defaults(fn=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """A cascade file, an interpolation, or cli/sample.py's sampling of a checkpoint."""
    if is_cascade(args.checkpoint):
        return cmd_cascade(args)
    if any(getattr(args, name, None) is not None for name in ("interpolate", "video", "interpolate_level")):
        return cmd_interpolate(args)
    return sample._cmd_sample(args)


def is_cascade(path: str) -> bool:
    """Whether the sample command's first argument names a cascade file (a .yaml or .yml path, not a directory)."""
    return Path(path).suffix.lower() in CASCADE_SUFFIXES and not Path(path).is_dir()


def _given(args: argparse.Namespace, flags) -> list[str]:
    return [flag for flag, name, unset in flags if getattr(args, name, unset) != unset]


def cmd_cascade(args: argparse.Namespace) -> int:
    """``moviola sample CASCADE.yaml``: every check (flags, file, checkpoints' configs) before any weights load."""
    from moviola.pipelines.cascade import base_config, load_cascade, override, plan_cascade, run_cascade

    refused = _given(args, STAGE_FLAGS)
    if refused:
        raise ValueError(f"{refused[0]} does not apply to a cascade file: each stage's settings are in "
                         f"{args.checkpoint} (see docs/long_videos.md, Cascades)")
    sample._check_sample_args(args)
    prompts = sample._read_prompts(args)
    if args.label and prompts is not None:
        raise ValueError("give --label or --prompt/--prompts-file, not both")
    given = getattr(args, "given", set())
    cascade = override(load_cascade(args.checkpoint), prompt=prompts, labels=args.label,
                       negative_prompt=args.negative_prompt, num_frames=args.frames,
                       num_videos=args.num_videos if "num_videos" in given else None,
                       seed=args.seed if "seed" in given else None, long=sample._long(args) if args.long else None)
    if cascade.prompt is None and cascade.labels is None:  # as `moviola sample` does for a class model
        classes = base_config(cascade).conditions.num_classes
        if classes:
            k = cascade.num_videos or 1
            cascade = override(cascade, labels=[i % classes for i in range(k)], num_videos=1)
    plan = plan_cascade(cascade)  # every check against the checkpoints' configs, no weights
    video = run_cascade(cascade, device=args.device, weights=args.weights, progress=not args.quiet)
    fps = args.fps or plan.frame_rate
    rows = [{"seed": cascade.seed + i, "cascade": str(args.checkpoint),
             **({"prompt": plan.prompts[i]} if plan.prompts is not None else {}),
             **({"label": plan.labels[i]} if plan.labels is not None else {})} for i in range(len(video))]
    _write(video, args, fps, rows)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    """``moviola sample CKPT --interpolate 4|16 --video IN``: the flags, then the model, before any compute."""
    import moviola
    from moviola.io.checkpoint import check_kind
    from moviola.pipelines.inputs import video_tensor
    from moviola.pipelines.interpolate import interpolate, keyframes_per_window, levels_of
    from moviola.video import video_fps

    if args.interpolate is None:
        flag = "--video" if args.video is not None else "--interpolate-level"
        raise ValueError(f"{flag} is an option of --interpolate 4|16")
    if args.video is None:
        raise ValueError("--interpolate needs --video IN: the video whose frames become the keyframes (to "
                         "interpolate a sampled video, write a cascade file: docs/long_videos.md)")
    conflicting = _given(args, NOT_WITH_INTERPOLATE)
    if conflicting:
        raise ValueError(f"--interpolate does not take {conflicting[0]}: the frames and size follow from --video")
    if not Path(args.video).is_file():
        raise ValueError(f"--video {args.video}: no such video file")
    levels_of(args.interpolate, args.interpolate_level)
    sample._check_sample_args(args)
    prompts = sample._read_prompts(args)
    if args.label and prompts is not None:
        raise ValueError("give --label or --prompt/--prompts-file, not both")
    check_kind(args.checkpoint, ("diffusion",), "a diffusion model")
    pipe = moviola.load_pipeline(args.checkpoint, weights=args.weights, device=args.device)
    keyframes_per_window(pipe)  # a model that cannot interpolate: one line, before the video is read
    prompts, labels = sample.per_video(pipe, args, prompts, "this is a text-conditioned model: give --prompt TEXT "
                                                            "(\"\" for none) or --prompts-file FILE")
    n = len(prompts) if prompts is not None else len(labels) if labels is not None else args.num_videos
    try:
        video = video_tensor(args.video, "--video")
    except ValueError as e:
        raise ValueError(f"--video {args.video}: {e}") from None
    out = interpolate(pipe, video.expand(n, -1, -1, -1, -1), factor=args.interpolate, level=args.interpolate_level,
                      prompt=prompts, labels=labels, negative_prompt=args.negative_prompt, steps=args.steps,
                      sampler=args.sampler, cfg=args.cfg, eta=args.eta, context_guidance=args.context_guidance,
                      temporal_guidance=args.temporal_guidance, seed=args.seed, progress=not args.quiet)
    fps = args.fps or (video_fps(args.video) or 8.0) * args.interpolate
    rows = [{"seed": args.seed + i, "video": str(args.video), "interpolate": args.interpolate,
             **({"prompt": prompts[i]} if prompts is not None else {}),
             **({"label": labels[i]} if labels is not None else {})} for i in range(n)]
    _write(out, args, fps, rows)
    return 0


def _write(video, args: argparse.Namespace, fps: float, rows: list[dict]) -> None:
    """--out (one video, or a grid of several) and --out-dir (one file per video and manifest.jsonl)."""
    from moviola.video import save_video, save_video_grid

    if args.out:
        with writing(args.out, "--out"):
            (save_video if len(video) == 1 else save_video_grid)(video[0] if len(video) == 1 else video, args.out,
                                                                  fps=fps)
        print(f"wrote {args.out} ({len(video)} video{'s' if len(video) > 1 else ''}, {video.shape[2]} frames of "
              f"{video.shape[3]}×{video.shape[4]} at {fps:g} fps)")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        with writing(out_dir, "--out-dir"):
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / "manifest.jsonl", "w") as f:
                for i, (v, row) in enumerate(zip(video, rows)):
                    name = f"{i:05d}.{args.format}"
                    save_video(v, out_dir / name, fps=fps)
                    f.write(json.dumps({"file": name, **row, "fps": fps}) + "\n")
        print(f"wrote {len(video)} videos and manifest.jsonl to {out_dir}")
