"""``moviola sample``: videos from a checkpoint, to one file (a grid) or a folder with a manifest.

``--fps F`` has one meaning: the rate the videos play at. The files are written at F (default 8), and a
model trained with ``conditions.fps`` is also conditioned on F (default: its training data's rate,
``data.fps / data.frame_strides[0]``, which the files then play at), so the motion plays at the speed the
model made it for; the manifest then records each video's ``fps``.

``--upsample VIDEO`` samples an upsampler (a model trained with ``conditions.low_res``): every video is VIDEO at
``conditions.low_res_factor`` × its size, with its frame count, its low-resolution input noised to
``--noise-level N`` (default ``sample.noise_level``; a model trained with ``conditions.noise_level`` only).
``--frames`` and ``--size`` follow from VIDEO (given, they must agree).

``--long autoregressive|fifo`` makes videos of any ``--frames`` from a model trained on short clips, under one
progress bar over each batch's frames (pipelines/long_video.py, pipelines/fifo.py, docs/long_videos.md):
clip after clip from the last ``--context-frames K`` frames of the one before (a model with context frames), or
FIFO-Diffusion's queue (``--partitions N``, ``--no-lookahead``, ``--fifo-init clip|noise``; any model).

A cascade file (``moviola sample CASCADE.yaml``) in place of the checkpoint runs a base model and its stages, and
``--interpolate 4|16 --video IN`` interpolates a video file with a keyframes model: cli/cascade.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Optional

from moviola.cli.common import Given, check_numbers, check_output, writing
from moviola.diffusion.samplers import SAMPLERS
from moviola.io.checkpoint import check_kind

BATCH = 16  # videos per pipeline call: the pipeline's default batch, so each video's batch is the same as in one call


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate videos from a checkpoint or run directory")
    s.add_argument("checkpoint", help="a checkpoint directory, a run directory (its newest checkpoint), or a cascade "
                                      "file (.yaml: a base model and its upsampling and interpolation stages)")
    s.add_argument("--label", type=int, action="append", help="class label (repeatable)")
    s.add_argument("--prompt", action="append", help="text prompt (repeatable; a text-to-video model)")
    s.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--negative-prompt", help="what guidance steers away from (default: the empty prompt)")
    s.add_argument("--image", help="first frame (an image file, or a video whose first frame is taken): "
                                   "image-to-video; resized to cover the frame size, centre-cropped")
    s.add_argument("--upsample", metavar="VIDEO",
                   help="the video file to upsample, for an upsampler (a model trained with conditions.low_res): "
                        "the output has its frames at conditions.low_res_factor × its size")
    s.add_argument("--noise-level", type=int, metavar="N",
                   help="with --upsample: the noise-augmentation level of the low-resolution input, a timestep "
                        "(default: the checkpoint's sample.noise_level; a model trained with conditions.noise_level)")
    s.add_argument("--num-videos", type=int, default=1, action=Given,
                   help="videos per label or prompt (or in all, without them)")
    s.add_argument("--sampler", choices=list(SAMPLERS), help="the sampler (default: the checkpoint's sample.sampler)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's sample.steps)")
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale, 1 = none (default: the checkpoint's "
                                             "sample.cfg)")
    s.add_argument("--context-guidance", type=float, default=1.0, metavar="S",
                   help="guidance scale on the given frames (--image), Video LDM's context guidance: "
                        "f_cfg + (S - 1)(f(frames) - f(no frames)); 1 = none (default)")
    s.add_argument("--temporal-guidance", type=float, default=0.0, metavar="S",
                   help="VideoCrafter's temporal guidance (the official --unconditional_guidance_scale_temporal): "
                        "adds S(f(c) - f(c without temporal attention)); 0 = none (default); a VideoCrafter model only")
    s.add_argument("--eta", type=float, help="DDIM eta, 0 = deterministic (default: the checkpoint's sample.eta)")
    s.add_argument("--seed", type=int, default=0, action=Given, help="video i starts from the noise of seed + i")
    s.add_argument("--frames", type=int, help="frames to generate (default: the training count)")
    s.add_argument("--size", type=int, help="frame size in pixels (default: the training size)")
    s.add_argument("--fps", type=float, metavar="F",
                   help="frame rate of the written files (default: 8); for a model trained with conditions.fps "
                        "also its frame-rate condition, so the file plays the motion at the speed it was made for "
                        "(default there: the training data's rate, data.fps / data.frame_strides[0])")
    s.add_argument("--long", choices=["autoregressive", "fifo"],
                   help="a video of any --frames from a model trained on short clips: autoregressive (each clip "
                        "continues the last frames of the one before; a model with context frames) or fifo "
                        "(FIFO-Diffusion; any model)")
    s.add_argument("--context-frames", type=int, metavar="K",
                   help="with --long autoregressive: latent frames carried into the next clip (default: 2 for a "
                        "model trained on prefixes, else 1)")
    s.add_argument("--partitions", type=int, metavar="N",
                   help="with --long fifo: the queue holds N clips' worth of frames (default 4); its steps are a "
                        "multiple of its frames (--steps, default: the least multiple not below sample.steps)")
    s.add_argument("--no-lookahead", action="store_true", help="with --long fifo: no lookahead denoising (half the "
                                                               "model calls)")
    s.add_argument("--fifo-init", choices=["clip", "noise"],
                   help="with --long fifo: start the queue from a sampled clip noised along the diagonal (clip, "
                        "the default) or from noise")
    s.add_argument("--out", help="output file: .mp4, .gif, or .png (a grid of all videos)")
    s.add_argument("--out-dir", help="write one file per video plus manifest.jsonl here")
    s.add_argument("--format", choices=["mp4", "gif", "png"], default="mp4", help="file type for --out-dir")
    s.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="a training checkpoint's EMA weights or its raw model weights")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto: cuda, then mps, then cpu)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(fn=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    import moviola

    _check_sample_args(args)
    prompts = _read_prompts(args)
    if args.label and prompts is not None:
        raise ValueError("give --label or --prompt/--prompts-file, not both")
    if args.negative_prompt is not None and prompts is None:
        raise ValueError("--negative-prompt needs --prompt or --prompts-file")
    check_kind(args.checkpoint, ("diffusion",), "a diffusion model")
    pipe = moviola.load_pipeline(args.checkpoint, weights=args.weights, device=args.device)
    prompts, labels = per_video(pipe, args, prompts, "this is a text-to-video model: give --prompt TEXT "
                                                     "(repeatable) or --prompts-file FILE")
    _check_upsample(pipe, args)
    # one frame rate: the condition of a model trained with conditions.fps, and the rate the files play at
    args.file_fps = pipe.frame_rate(args.fps)
    video = generate(pipe, args, labels, prompts)
    if args.out_dir:
        _write_folder(video, args, pipe, labels, prompts)
    if args.out:
        _write_file(video, args, pipe)
    return 0


def generate(pipe, args: argparse.Namespace, labels: Optional[list[int]], prompts: Optional[list[str]]):
    """Every video, one pipeline call per batch of :data:`BATCH` under one bar over the videos (the
    sampler's own bar runs per batch). Video i keeps the seed ``seed + i`` and the batch it has in one
    call of the pipeline, so the videos are that call's; a warning repeated by the batches is shown once."""
    import torch
    from tqdm import tqdm

    n = len(labels) if labels is not None else len(prompts) if prompts is not None else args.num_videos
    videos, shown, show = [], set(), warnings.showwarning

    def show_once(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings(), tqdm(total=n, desc="videos", unit="video", disable=args.quiet,
                                         file=sys.stderr, dynamic_ncols=True) as bar:
        warnings.simplefilter("always")
        warnings.showwarning = show_once
        for start in range(0, n, BATCH):
            part = slice(start, start + BATCH)
            videos.append(pipe(labels=None if labels is None else labels[part],
                               prompt=None if prompts is None else prompts[part],
                               negative_prompt=args.negative_prompt, image=args.image,
                               **({"low_res": args.upsample} if getattr(args, "upsample", None) else {}),
                               **({"noise_level": args.noise_level}
                                  if getattr(args, "noise_level", None) is not None else {}),
                               num_videos=min(BATCH, n - start), num_frames=args.frames, height=args.size,
                               width=args.size, steps=args.steps, sampler=args.sampler, cfg=args.cfg, eta=args.eta,
                               seed=args.seed + start, batch_size=BATCH, progress=not args.quiet,
                               context_guidance=getattr(args, "context_guidance", 1.0),
                               **({"temporal_guidance": args.temporal_guidance}
                                  if getattr(args, "temporal_guidance", 0.0) else {}),
                               **({"fps": _fps(pipe, args)} if "fps" in getattr(pipe, "accepts", ()) else {}),
                               **({"long": _long(args)} if getattr(args, "long", None) else {})))
            bar.update(len(videos[-1]))
    return torch.cat(videos)


def _long(args: argparse.Namespace):
    """--long and its options as the pipeline's ``long=``."""
    from moviola.pipelines import FIFO, Autoregressive

    if args.long == "autoregressive":
        return Autoregressive(context_frames=args.context_frames)
    return FIFO(**{name: value for name, value in (("partitions", args.partitions), ("init", args.fifo_init))
                   if value is not None}, lookahead=not args.no_lookahead)


def _check_long_args(args: argparse.Namespace) -> None:
    """--long and the options of each mode: each option with its mode, --frames given (before any load)."""
    long = getattr(args, "long", None)
    fifo_only = [flag for flag, on in (("--partitions", getattr(args, "partitions", None) is not None),
                                       ("--no-lookahead", getattr(args, "no_lookahead", False)),
                                       ("--fifo-init", getattr(args, "fifo_init", None) is not None)) if on]
    if fifo_only and long != "fifo":
        raise ValueError(f"{fifo_only[0]} is an option of --long fifo")
    if getattr(args, "context_frames", None) is not None and long != "autoregressive":
        raise ValueError("--context-frames is an option of --long autoregressive")
    for name in ("partitions", "context_frames"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if long is None:
        return
    if args.frames is None:
        raise ValueError(f"--long {long} makes a video of --frames frames: give --frames")
    if getattr(args, "upsample", None) is not None:
        raise ValueError(f"--long {long} does not upsample: give --long or --upsample, not both")
    if long == "fifo" and args.image is not None:
        raise ValueError("--long fifo takes no --image (its queue has no place for a given frame): use --long "
                         "autoregressive")


def _fps(pipe, args: argparse.Namespace) -> float:
    """The frame rate of the videos: --fps, else the pipeline's default (``Pipeline.frame_rate``)."""
    rate = getattr(args, "file_fps", None)
    return pipe.frame_rate(args.fps) if rate is None else rate


def _check_sample_args(args: argparse.Namespace) -> None:
    """The argument errors found before a checkpoint is loaded (so a typo costs no load)."""
    if args.num_videos <= 0:
        raise ValueError("--num-videos must be at least 1")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number (frames per second), got {args.fps:g}")
    check_numbers(args)
    upsample, level = getattr(args, "upsample", None), getattr(args, "noise_level", None)
    if level is not None and upsample is None:
        raise ValueError("--noise-level is the noise level of an upsampler's input: give it with --upsample VIDEO")
    if level is not None and level < 0:
        raise ValueError(f"--noise-level must be 0 or more (a timestep of the schedule), got {level}")
    if upsample is not None and not Path(upsample).is_file():
        raise ValueError(f"--upsample {upsample}: no such video file")
    if upsample is not None and args.image is not None:
        raise ValueError("give --upsample or --image, not both (an upsampler takes no first frame)")
    _check_long_args(args)
    if not math.isfinite(getattr(args, "context_guidance", 1.0)):
        raise ValueError(f"--context-guidance must be a finite number, got {args.context_guidance}")
    if not math.isfinite(getattr(args, "temporal_guidance", 0.0)):
        raise ValueError(f"--temporal-guidance must be a finite number, got {args.temporal_guidance}")
    if args.out is None and args.out_dir is None:
        raise ValueError("give --out FILE (.mp4, .gif or .png) or --out-dir DIR")
    if args.out is not None and Path(args.out).suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {args.out}: the suffix must be .mp4, .gif or .png")
    check_output(args.out, "--out")
    check_output(args.out_dir, "--out-dir", directory=True)


def per_video(pipe, args: argparse.Namespace, prompts, no_prompt: str):
    """Each video's prompt and label: ``--num-videos`` of each prompt or ``--label``; a class model given neither
    gets labels 0, 1, 2, ...; a text model given no prompt is the ValueError ``no_prompt``."""
    labels = None
    if args.label:
        labels = [y for y in args.label for _ in range(args.num_videos)]
    elif "labels" in pipe.accepts and prompts is None:
        labels = [i % pipe.config.conditions.num_classes for i in range(args.num_videos)]
    if prompts is not None:
        prompts = [p for p in prompts for _ in range(args.num_videos)]
    elif "text" in pipe.accepts:
        raise ValueError(no_prompt)
    return prompts, labels


def _check_upsample(pipe, args: argparse.Namespace) -> None:
    """--upsample against the loaded model, and the video's size against --frames / --size, before any sampling."""
    upsample = getattr(args, "upsample", None)
    if upsample is None:
        if "low_res" in pipe.accepts:
            raise ValueError("this checkpoint is an upsampler (trained with conditions.low_res): give --upsample VIDEO "
                             "(the video file to upsample)")
        return
    if "low_res" not in pipe.accepts:
        raise ValueError(f"--upsample {upsample}: this checkpoint is not an upsampler (it was trained without "
                         "conditions.low_res): sample it without --upsample")
    if getattr(args, "noise_level", None) is not None and "noise_level" not in pipe.accepts:
        raise ValueError("--noise-level: this upsampler was trained without noise augmentation "
                         "(conditions.noise_level): leave --noise-level out")
    steps = pipe.schedule.num_timesteps
    if getattr(args, "noise_level", None) is not None and args.noise_level >= steps:
        raise ValueError(f"--noise-level {args.noise_level} is not a timestep of the schedule: give 0 to {steps - 1}")
    try:
        low = pipe.prepare_low_res(upsample)  # read, not encoded: an unreadable file is this error
        T, H, W = pipe.upsampled_size(low)
    except ValueError as e:
        raise ValueError(f"--upsample {upsample}: {e}") from None
    shape = f"its {T} frames of {low.shape[3]}×{low.shape[4]} upsample to {T} frames of {H}×{W}"
    if args.frames is not None and args.frames != T:
        raise ValueError(f"--frames {args.frames} disagrees with --upsample {upsample}: {shape}; leave --frames out")
    if args.size is not None and (args.size, args.size) != (H, W):
        raise ValueError(f"--size {args.size} disagrees with --upsample {upsample}: {shape}; leave --size out")


def _write_folder(video, args: argparse.Namespace, pipe, labels: Optional[list[int]],
                  prompts: Optional[list[str]]) -> None:
    """One file per video plus manifest.jsonl: its seed and condition (what eval shapes scores it by)."""
    from moviola.video import save_video

    out_dir = Path(args.out_dir)
    with writing(out_dir, "--out-dir"):
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "manifest.jsonl", "w") as f:
            for i, v in enumerate(video):
                name = f"{i:05d}.{args.format}"
                save_video(v, out_dir / name, fps=_fps(pipe, args))
                row = {"file": name, "seed": args.seed + i}
                if "fps" in pipe.accepts:  # the frame-rate condition it was made with
                    row["fps"] = _fps(pipe, args)
                if labels is not None:
                    row["label"] = labels[i]
                    row.update(_label_caption(pipe, labels[i]))
                if prompts is not None:
                    row["prompt"] = prompts[i]
                    row.update(_prompt_attributes(prompts[i]))
                if args.image:
                    row["image"] = str(args.image)
                if getattr(args, "upsample", None):
                    row["upsample"] = str(args.upsample)
                if getattr(args, "long", None):
                    row["long"] = args.long
                f.write(json.dumps(row) + "\n")
    print(f"wrote {len(video)} videos and manifest.jsonl to {out_dir}")


def _write_file(video, args: argparse.Namespace, pipe) -> None:
    """--out: one video as it is, several as a grid."""
    from moviola.video import save_video, save_video_grid

    fps = _fps(pipe, args)
    with writing(args.out, "--out"):
        if len(video) == 1:
            save_video(video[0], args.out, fps=fps)
        else:
            save_video_grid(video, args.out, fps=fps)
    print(f"wrote {args.out} ({len(video)} video{'s' if len(video) > 1 else ''}, "
          f"{video.shape[2]} frames of {video.shape[3]}×{video.shape[4]})")


def _label_caption(pipe, label: int) -> dict:
    from moviola.data.shapes import NUM_CLASSES, caption, label_to_attributes

    if pipe.config.data.dataset == "shapes" and pipe.config.conditions.num_classes == NUM_CLASSES and label >= 0:
        colour, shape, direction = label_to_attributes(label)
        return {"caption": caption(colour, shape, direction), "colour": colour, "shape": shape,
                "direction": direction}
    return {}


def _read_prompts(args: argparse.Namespace) -> Optional[list[str]]:
    """--prompt (repeatable) and --prompts-file (one prompt per line; blank lines skipped), in that order."""
    if args.prompt is None and args.prompts_file is None:
        return None
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise ValueError(f"--prompts-file {path}: no such file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"--prompts-file {path}: not UTF-8 text (one prompt per line)") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompts given: --prompts-file is empty (one prompt per line)"
                         if args.prompts_file is not None else "no prompts given")
    return prompts


def _prompt_attributes(prompt: str) -> dict:
    """colour/shape/direction when the prompt is a Moving Shapes caption (so eval shapes can score it)."""
    from moviola.data.shapes import parse_caption

    parsed = parse_caption(prompt)
    return {} if parsed is None else dict(zip(("colour", "shape", "direction"), parsed))
