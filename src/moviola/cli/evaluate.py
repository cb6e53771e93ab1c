"""``moviola eval shapes|long|fvd|fid`` and ``eval-vae``: scores of generated videos and of autoencoders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from moviola.cli.common import check_numbers, check_output, writing
from moviola.diffusion.samplers import SAMPLERS
from moviola.io.checkpoint import check_kind


def add_eval_vae_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval-vae", help="PSNR, SSIM and temporal flicker of an autoencoder's reconstructions")
    ev.add_argument("autoencoder", help="an autoencoder directory (moviola export of a train-vae run, a diffusers "
                                        "AutoencoderKL) or a run directory")
    ev.add_argument("--videos", help="a folder of videos (searched recursively), or one video file, to reconstruct")
    ev.add_argument("--shapes", type=int, help="reconstruct this many Moving Shapes test-split clips instead "
                    "(also scored by the Moving Shapes rules: the best a latent model on it can score)")
    ev.add_argument("--frames", type=int, default=17, help="frames per clip (a causal VAE takes 1 + 4k)")
    ev.add_argument("--size", type=int, default=64, help="frame size (videos are resized to cover it, centre-cropped)")
    ev.add_argument("--stride", type=int, default=1, help="take every N-th frame of the videos")
    ev.add_argument("--batch-size", type=int, default=4, help="clips encoded and decoded at once")
    ev.add_argument("--chunk-frames", type=int, help="causal VAE: encode this many frames at a time")
    ev.add_argument("--tile-size", type=int, help="causal VAE: spatial tiles of this many pixels")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ev.add_argument("--json", help="write the result here")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(fn=_cmd_eval_vae)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate generated videos")
    esub = e.add_subparsers(dest="metric", required=True)
    es = esub.add_parser("shapes", help="Moving Shapes colour/shape/direction accuracy, per split")
    es.add_argument("--checkpoint", help="a class- or text-conditional Moving Shapes checkpoint: sample every "
                                         "class (from its label or its caption) and score")
    es.add_argument("--image-to-video", action="store_true", help="also give each video the first frame of a "
                                                                     "test clip of its class; adds frame-0 PSNR")
    es.add_argument("--videos", help="a folder with manifest.jsonl, captions.jsonl or captions.csv (labels, "
                                     "colour/shape/direction or Moving Shapes captions), or such a .jsonl/.csv "
                                     "manifest: score its files")
    es.add_argument("--per-class", type=int, default=1, help="videos per class (48 classes)")
    es.add_argument("--steps", type=int, default=50, help="sampling steps")
    es.add_argument("--frames", type=int, help="sample this many frames (default: the training length); a longer "
                                               "video shows how the model generalizes in length")
    es.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the checkpoint's sample.cfg)")
    es.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="the sampler")
    es.add_argument("--seed", type=int, default=0, help="video i starts from the noise of seed + i")
    es.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto: cuda, then mps, then cpu)")
    es.add_argument("--fps", type=float, help="the frame-rate condition (a model trained with conditions.fps); the "
                                              "scores' travel_per_frame_mean is the speed it gives")
    es.add_argument("--palette", action="append", metavar="WORD=R,G,B",
                    help="score a colour word against another RGB value (e.g. red=230,50,230: a personalized model "
                         "that draws red as magenta); repeatable. Default: the checkpoint's data.palette")
    es.add_argument("--csv", help="write one row per video here")
    es.add_argument("--json", help="write the summary here")
    es.add_argument("--quiet", action="store_true", help="no progress bar")
    es.set_defaults(fn=_cmd_eval_shapes)
    el = esub.add_parser("long", help="Moving Shapes scores of long videos: per window and across windows (colour "
                                      "and shape held, one object, seams, reflection at the walls)")
    el.add_argument("--videos", help="a folder with manifest.jsonl or captions.jsonl: score its files (e.g. moviola "
                                     "data shapes --bounce --frames 257)")
    el.add_argument("--checkpoint", help="a class- or text-conditional Moving Shapes checkpoint: sample --frames "
                                         "frames of every class and score")
    el.add_argument("--frames", type=int, help="frames to sample (--checkpoint; required)")
    el.add_argument("--long", choices=["autoregressive", "fifo"], help="the pipeline's long-video mode (default: "
                                                                       "none, every frame sampled at once)")
    el.add_argument("--per-class", type=int, default=1, help="videos per class (48 classes)")
    el.add_argument("--steps", type=int, help="sampling steps (default: 50; with --long fifo, FIFO's own default, "
                                               "a multiple of its queue's levels)")
    el.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the checkpoint's sample.cfg)")
    el.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="the sampler")
    el.add_argument("--seed", type=int, default=0, help="video i starts from the noise of seed + i")
    el.add_argument("--batch-size", type=int, default=4, help="videos sampled at once")
    el.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto: cuda, then mps, then cpu)")
    el.add_argument("--window", type=int, default=16, help="frames per window the colour, shape and one-object "
                                                          "figures are read in")
    el.add_argument("--csv", help="write one row per video here")
    el.add_argument("--json", help="write the summary here")
    el.add_argument("--quiet", action="store_true", help="no progress bar")
    el.set_defaults(fn=_cmd_eval_long)
    ef = esub.add_parser("fvd", help="Fréchet Video Distance, StyleGAN-V protocol (docs/evaluation.md)")
    ef.add_argument("--real", required=True, help="folder of real videos (first --clips usable ones, random offsets)")
    ef.add_argument("--fake", required=True, help="folder of generated videos (moviola sample --out-dir), from frame 0")
    ef.add_argument("--detector", required=True, help="local I3D file: i3d_torchscript.pt or an I3D state dict")
    ef.add_argument("--detector-sha256", help="expected SHA-256 of the detector (overrides the pinned one)")
    ef.add_argument("--clips", type=int, default=2048, help="clips per set")
    ef.add_argument("--frames", type=int, default=16, help="frames per clip")
    ef.add_argument("--stride", type=int, default=1, help="take every N-th frame (StyleGAN-V _subsample8f: 8)")
    ef.add_argument("--resolution", type=int, help="centre-crop and resize frames to this first (Latte: 256)")
    ef.add_argument("--seed", type=int, default=0, help="seed of the real clips' random offsets")
    ef.add_argument("--batch-size", type=int, default=16, help="clips through the detector at once")
    ef.add_argument("--no-cache", action="store_true", help="recompute the real-set statistics")
    ef.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ef.add_argument("--json", help="write the result here")
    ef.set_defaults(fn=_cmd_eval_fvd)
    ei = esub.add_parser("fid", help="FID (and IS of the generated set) over frames, FID Inception from a local file")
    ei.add_argument("--real", help="folder (or file) of real videos/images; omit for IS alone")
    ei.add_argument("--fake", required=True, help="folder (or file) of generated videos/images")
    ei.add_argument("--weights", required=True, help="local pt_inception-2015-12-05-6726825d.pth (pytorch-fid's "
                                                     "release), or a directory holding it")
    ei.add_argument("--weights-sha256", help="expected SHA-256 (or a prefix of >= 8 hex digits); overrides the pin")
    ei.add_argument("--frame-stride", type=int, default=1, help="score every N-th frame of each video")
    ei.add_argument("--max-frames", type=int, help="at most this many frames per video")
    ei.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    ei.add_argument("--batch-size", type=int, default=50, help="frames through Inception at once")
    ei.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ei.add_argument("--json", help="write the result here")
    ei.set_defaults(fn=_cmd_eval_fid)


def _report(result: dict, json_path: Optional[str]) -> int:
    """Print a result as JSON (and write it to ``--json``)."""
    text = json.dumps(result, indent=2)
    if json_path:
        with writing(json_path, "--json"):
            Path(json_path).write_text(text + "\n")
    print(text)
    return 0


def _cmd_eval_shapes(args: argparse.Namespace) -> int:
    from moviola.eval.shapes_eval import evaluate_checkpoint, evaluate_folder, write_rows_csv

    if (args.checkpoint is None) == (args.videos is None):
        raise ValueError("give exactly one of --checkpoint (sample and score) or --videos DIR (score files)")
    check_output(args.csv, "--csv", parents=False)
    check_output(args.json, "--json", parents=False)
    if args.checkpoint is not None:
        if args.per_class <= 0:
            raise ValueError("--per-class must be at least 1")
        check_numbers(args)
        check_kind(args.checkpoint, ("diffusion",), "a diffusion model")
        palette = parse_palette(args.palette) if args.palette else None
        result = evaluate_checkpoint(args.checkpoint, per_class=args.per_class, steps=args.steps, cfg=args.cfg,
                                     sampler=args.sampler, seed=args.seed, device=args.device,
                                     image_to_video=args.image_to_video, progress=not args.quiet,
                                     palette=palette, num_frames=args.frames, fps=args.fps)
    else:
        if args.fps is not None:
            raise ValueError("--fps is a sampling condition (--checkpoint); a --videos folder is scored as it is")
        if args.frames is not None:
            raise ValueError("--frames sets how many frames a checkpoint samples (--checkpoint); a --videos folder's "
                             "files are scored as they are")
        if args.palette:
            raise ValueError("--palette scores a checkpoint's samples (--checkpoint); --videos folders are scored "
                             "against the spec's colours")
        result = evaluate_folder(args.videos, progress=not args.quiet)
    rows = result.pop("rows")
    if args.csv:
        with writing(args.csv, "--csv"):
            write_rows_csv(rows, args.csv)
    return _report(result, args.json)


def _cmd_eval_long(args: argparse.Namespace) -> int:
    from moviola.eval.long_video import evaluate_long_checkpoint, evaluate_long_folder, write_long_rows_csv

    if (args.checkpoint is None) == (args.videos is None):
        raise ValueError("give exactly one of --checkpoint (sample and score) or --videos DIR (score files)")
    if args.window < 2:
        raise ValueError(f"--window must be at least 2 frames, got {args.window}")
    check_output(args.csv, "--csv", parents=False)
    check_output(args.json, "--json", parents=False)
    if args.checkpoint is not None:
        if args.frames is None:
            raise ValueError("--checkpoint needs --frames N: how many frames to sample (e.g. 257)")
        for name in ("per_class", "batch_size"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        check_numbers(args)
        check_kind(args.checkpoint, ("diffusion",), "a diffusion model")
        result = evaluate_long_checkpoint(args.checkpoint, frames=args.frames, long=args.long,
                                          per_class=args.per_class, steps=args.steps, cfg=args.cfg,
                                          sampler=args.sampler, seed=args.seed, device=args.device,
                                          batch_size=args.batch_size, window=args.window, progress=not args.quiet)
    else:
        given = [flag for flag, value in (("--frames", args.frames), ("--long", args.long)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} set how a checkpoint samples (--checkpoint); a --videos "
                             "folder's files are scored as they are")
        result = evaluate_long_folder(args.videos, window=args.window, progress=not args.quiet)
    rows = result.pop("rows")
    if args.csv:
        with writing(args.csv, "--csv"):
            write_long_rows_csv(rows, args.csv)
    return _report(result, args.json)


def parse_palette(items: list[str]) -> dict[str, tuple[int, int, int]]:
    """``["red=230,50,230", ...]`` -> ``{"red": (230, 50, 230)}``; a malformed item is a ValueError naming it."""
    from moviola.data.shapes import COLOURS

    out = {}
    for item in items:
        word, _, rgb = item.partition("=")
        try:
            values = tuple(int(v) for v in rgb.split(","))
        except ValueError:
            values = ()
        if word not in COLOURS or len(values) != 3 or not all(0 <= v <= 255 for v in values):
            raise ValueError(f"--palette {item!r}: expected WORD=R,G,B with WORD one of {list(COLOURS)} and values "
                             "0..255, e.g. red=230,50,230")
        out[word] = values
    return out


def _cmd_eval_vae(args: argparse.Namespace) -> int:
    from moviola.eval.vae_eval import evaluate_autoencoder

    check_output(args.json, "--json", parents=False)
    result = evaluate_autoencoder(args.autoencoder, videos=args.videos, shapes=args.shapes, frames=args.frames,
                                  size=args.size, stride=args.stride, batch_size=args.batch_size,
                                  chunk_frames=args.chunk_frames, tile_size=args.tile_size, device=args.device,
                                  progress=not args.quiet)
    return _report(result, args.json)


def _cmd_eval_fid(args: argparse.Namespace) -> int:
    from moviola.eval.image_metrics import fid_from_stats, frames_from_files, inception_features, inception_score
    from moviola.eval.inception import load_inception
    from moviola.utils import resolve_device

    for name in ("frame_stride", "splits", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError("--max-frames must be at least 1")
    check_output(args.json, "--json", parents=False)
    model = load_inception(args.weights, sha256=args.weights_sha256, device=resolve_device(args.device))
    frames = dict(frame_stride=args.frame_stride, max_frames=args.max_frames)
    fake, logits = inception_features(frames_from_files(args.fake, **frames), model, args.batch_size,
                                      keep_logits=True)
    if logits.shape[0] < args.splits:
        raise ValueError(f"{logits.shape[0]} generated frames for {args.splits} IS splits: lower --splits")
    is_mean, is_std = inception_score(logits, splits=args.splits)
    result = {"generated_frames": fake.count, "inception_score": is_mean, "inception_score_std": is_std,
              "splits": args.splits, "weights_sha256": model.weights_sha256, **frames}
    if args.real:
        real = inception_features(frames_from_files(args.real, **frames), model, args.batch_size)
        result.update(fid=fid_from_stats(real, fake), real_frames=real.count)
    return _report(result, args.json)


def _cmd_eval_fvd(args: argparse.Namespace) -> int:
    from moviola.eval.fvd import fvd
    from moviola.eval.i3d import load_detector
    from moviola.utils import resolve_device

    if args.resolution is not None and args.resolution < 1:
        raise ValueError("--resolution must be positive")
    check_output(args.json, "--json", parents=False)
    detector = load_detector(args.detector, sha256=args.detector_sha256, device=resolve_device(args.device))
    result = fvd(args.real, args.fake, detector, clips=args.clips, frames=args.frames, stride=args.stride,
                 resolution=args.resolution, seed=args.seed, batch_size=args.batch_size, use_cache=not args.no_cache)
    return _report(result, args.json)
