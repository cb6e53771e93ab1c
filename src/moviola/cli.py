"""``moviola`` command line: the only place that parses arguments.

Every user error (bad config key or type, impossible shape, missing file, a bad argument) ends
as one line ``moviola: error: ...`` on stderr and exit code 2, never a traceback, and ``train``
leaves no run directory behind. Exit codes: 0 done, 1 a run that stopped on a fault (diverged,
checkpoints not writable, another OS error), 2 a user error, 130 / 143 stopped by SIGINT / SIGTERM
after writing a checkpoint (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 IsADirectoryError, PermissionError)


def _cmd_train(args: argparse.Namespace) -> int:
    from moviola.config import load_config
    from moviola.training import trainer_for

    # train-vae is train with the autoencoder task (train.task names what a run trains)
    overrides = ["train.task=autoencoder"] if args.command == "train-vae" else []
    overrides += list(args.set or [])
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
    created = None  # the topmost directory this command creates: removed again on a user error
    if not run_dir.exists():
        created = run_dir
        while not created.parent.exists():
            created = created.parent
    try:
        trainer = trainer_for(cfg)(cfg, run_dir, resume=args.resume, quiet=args.quiet,
                          init_from=getattr(args, "init_from", None))
        last = trainer.train()
    except USER_ERRORS:
        if created is not None and not any((run_dir / "checkpoints").glob("step_*")):
            shutil.rmtree(created, ignore_errors=True)
        raise
    print(json.dumps({"run_dir": str(run_dir), **{k: v for k, v in last.items() if k != "time"}}))
    if trainer.stopped_by:
        print(f"moviola: stopped by {trainer.stopped_by} at step {trainer.step}; checkpoint written; "
              f"continue with: moviola {args.command} --resume --run-dir {run_dir}", file=sys.stderr)
        return 128 + signal.Signals[trainer.stopped_by].value
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
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


def _cmd_sample(args: argparse.Namespace) -> int:
    import moviola
    from moviola.video import save_video, save_video_grid

    if args.num_videos <= 0:
        raise ValueError("--num-videos must be at least 1")
    _check_numbers(args)
    if args.out is None and args.out_dir is None:
        raise ValueError("give --out FILE (.mp4, .gif or .png) or --out-dir DIR")
    if args.out is not None and Path(args.out).suffix.lower() not in (".mp4", ".gif", ".png"):
        raise ValueError(f"--out {args.out}: the suffix must be .mp4, .gif or .png")
    prompts = _read_prompts(args)
    if args.label and prompts is not None:
        raise ValueError("give --label or --prompt/--prompts-file, not both")
    if args.negative_prompt is not None and prompts is None:
        raise ValueError("--negative-prompt needs --prompt or --prompts-file")
    pipe = moviola.load_pipeline(args.checkpoint, weights=args.weights, device=args.device)
    labels = None
    if args.label:
        labels = [y for y in args.label for _ in range(args.num_videos)]
    elif "labels" in pipe.accepts and prompts is None:
        labels = [i % pipe.config.conditions.num_classes for i in range(args.num_videos)]
    if prompts is not None:
        prompts = [p for p in prompts for _ in range(args.num_videos)]
    elif "text" in pipe.accepts:
        raise ValueError("this is a text-to-video model: give --prompt TEXT (repeatable) or --prompts-file FILE")
    video = pipe(labels=labels, prompt=prompts, negative_prompt=args.negative_prompt, image=args.image,
                 num_videos=args.num_videos, num_frames=args.frames, height=args.size,
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
                if prompts is not None:
                    row["prompt"] = prompts[i]
                    row.update(_prompt_attributes(prompts[i]))
                if args.image:
                    row["image"] = str(args.image)
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
        _check_numbers(args)
        result = evaluate_checkpoint(args.checkpoint, per_class=args.per_class, steps=args.steps, cfg=args.cfg,
                                     sampler=args.sampler, seed=args.seed, device=args.device,
                                     image_to_video=args.image_to_video)
    else:
        result = evaluate_folder(args.videos)
    rows = result.pop("rows")
    if args.csv:
        write_rows_csv(rows, args.csv)
    return _report(result, args.json)


def _report(result: dict, json_path: Optional[str]) -> int:
    """Print a result as JSON (and write it to ``--json``)."""
    text = json.dumps(result, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
    print(text)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from moviola import interop as convert

    if args.source == "latte-official":
        out = convert.convert_official(args.src, args.out, vae=args.vae, num_heads=args.num_heads,
                                       base_config=args.config)
    elif args.source == "diffusers-latte":
        out = convert.import_diffusers(args.src, args.out, vae=args.vae, text_encoder=args.text_encoder)
    else:
        out = convert.export_diffusers(args.src, args.out, weights=args.weights)
    print(f"wrote {out}")
    return 0


def _one_line(message: str) -> str:
    """Escape control characters (newlines, \\x1e, ...) an argument may carry: an error stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of every other moviola error (subparsers inherit it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"moviola: error: {_one_line(message)} (see: {self.prog} --help)\n")


def _cmd_export(args: argparse.Namespace) -> int:
    from moviola.config import config_from_json
    from moviola.io.checkpoint import resolve_checkpoint
    from moviola.training.export import export_checkpoint
    from moviola.training.vae_trainer import export_autoencoder

    if config_from_json(resolve_checkpoint(args.checkpoint) / "config.json").train.task == "autoencoder":
        out = export_autoencoder(args.checkpoint, args.out, weights=args.weights)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        kind = json.loads((out / "config.json").read_text()).get("_class_name", "")
        norm = ("the base VAE's latent normalization, unchanged" if kind == "TemporalDecoderVAE"
                else "its latent normalization measured on training data")
        print(f"wrote {out} ({size / 1e6:.1f} MB, {norm}; use it as autoencoder.path)")
        return 0
    out = export_checkpoint(args.checkpoint, args.out, weights=args.weights, dtype=args.dtype)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, {args.weights} weights in {args.dtype})")
    return 0


def _add_run_args(p: argparse.ArgumentParser, example: str) -> None:
    """The arguments of a training run, shared by ``train`` and ``train-vae`` (both run ``_cmd_train``)."""
    p.add_argument("config", nargs="?", help=f"YAML config (e.g. {example})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=3e-4")
    p.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="shorthand for --set train.precision=...")
    p.add_argument("--steps", type=int, help="shorthand for --set train.steps=...")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_train)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moviola", description="Latent video diffusion: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a denoiser from a YAML config")
    _add_run_args(t, "configs/shapes/latte-tiny.yaml")
    t.add_argument("--init-from", metavar="PATH", help="an image DiT state dict (.pt): fills the frame-wise layers; or a moviola checkpoint directory: warm start from all its weights")

    tv = sub.add_parser("train-vae", help="train an autoencoder (frame VAE, causal 3-D VAE, temporal decoder) "
                                          "from a YAML config")
    _add_run_args(tv, "configs/shapes/causal-vae-32.yaml")
    ev = sub.add_parser("eval-vae", help="PSNR, SSIM and temporal flicker of an autoencoder's reconstructions")
    ev.add_argument("autoencoder", help="an autoencoder directory (moviola export of a train-vae run, a diffusers "
                                        "AutoencoderKL) or a run directory")
    ev.add_argument("--videos", help="a folder of videos (or one file) to reconstruct")
    ev.add_argument("--shapes", type=int, help="reconstruct this many Moving Shapes test-split clips instead")
    ev.add_argument("--frames", type=int, default=17, help="frames per clip (a causal VAE takes 1 + 4k)")
    ev.add_argument("--size", type=int, default=64, help="frame size (videos are resized to cover it, centre-cropped)")
    ev.add_argument("--stride", type=int, default=1, help="take every N-th frame of the videos")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.add_argument("--chunk-frames", type=int, help="causal VAE: encode this many frames at a time")
    ev.add_argument("--tile-size", type=int, help="causal VAE: spatial tiles of this many pixels")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--json", help="write the result here")
    ev.set_defaults(fn=_cmd_eval_vae)
    s = sub.add_parser("sample", help="generate videos from a checkpoint or run directory")
    s.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest checkpoint)")
    s.add_argument("--label", type=int, action="append", help="class label (repeatable)")
    s.add_argument("--prompt", action="append", help="text prompt (repeatable; a text-to-video model)")
    s.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--negative-prompt", help="what guidance steers away from (default: the empty prompt)")
    s.add_argument("--image", help="first frame (an image file, or a video whose first frame is taken): "
                                   "image-to-video; resized to cover the frame size, centre-cropped")
    s.add_argument("--num-videos", type=int, default=1, help="videos per label or prompt (or in all, without them)")
    s.add_argument("--sampler", choices=["ddim", "ddpm", "dpm++2m"])
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

    x = sub.add_parser("export", help="write a checkpoint's weights + config alone, for shipping")
    x.add_argument("checkpoint", help="a checkpoint directory or a run directory (its newest checkpoint)")
    x.add_argument("out", help="output directory (config.json + model.safetensors)")
    x.add_argument("--weights", choices=["ema", "model"], default="ema")
    x.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    x.set_defaults(fn=_cmd_export)

    c = sub.add_parser("convert", help="import or export weights: official Latte .pt, diffusers Latte")
    csub = c.add_subparsers(dest="source", required=True)
    co = csub.add_parser("latte-official", help="an official Latte .pt (ffs, sky, taichi, ucf101) -> a checkpoint dir")
    co.add_argument("src", help="the .pt file ({'ema', 'model'} or a bare state dict)")
    co.add_argument("out", help="output checkpoint directory (config.json + model.safetensors)")
    co.add_argument("--vae", required=True, help="the diffusers AutoencoderKL directory it was trained with "
                    "(the release's vae/ folder); only its config.json is read here")
    co.add_argument("--num-heads", type=int, help="attention heads (default: those of the named size of its width)")
    co.add_argument("--config", help="take data/diffusion/train/sample settings from this YAML (e.g. "
                    "configs/latte/ffs.yaml); default: the paper's")
    co.set_defaults(fn=_cmd_convert)
    cd = csub.add_parser("diffusers-latte", help="a diffusers LatteTransformer3DModel directory -> a checkpoint dir")
    cd.add_argument("src", help="its save_pretrained directory (or a pipeline root with transformer/)")
    cd.add_argument("out", help="output checkpoint directory")
    cd.add_argument("--vae", help="the AutoencoderKL directory (default: vae/ beside transformer/)")
    cd.add_argument("--text-encoder", help="the T5 encoder directory (default: text_encoder/ beside transformer/, "
                                           "if there is one)")
    cd.set_defaults(fn=_cmd_convert)
    ce = csub.add_parser("to-diffusers", help="a text-conditioned moviola Latte -> a LatteTransformer3DModel directory")
    ce.add_argument("src", help="a checkpoint directory or a run directory")
    ce.add_argument("out", help="output directory (config.json + diffusion_pytorch_model.safetensors)")
    ce.add_argument("--weights", choices=["ema", "model"], default="ema")
    ce.set_defaults(fn=_cmd_convert)

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
    es.add_argument("--checkpoint", help="a class- or text-conditional Moving Shapes checkpoint: sample every "
                                         "class (from its label or its caption) and score")
    es.add_argument("--image-to-video", action="store_true", help="also give each video the first frame of a "
                                                                     "test clip of its class; adds frame-0 PSNR")
    es.add_argument("--videos", help="a folder with manifest.jsonl or captions.jsonl: score its files")
    es.add_argument("--per-class", type=int, default=1)
    es.add_argument("--steps", type=int, default=50)
    es.add_argument("--cfg", type=float)
    es.add_argument("--sampler", choices=["ddim", "ddpm", "dpm++2m"], default="ddim")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--device", default=None)
    es.add_argument("--csv", help="write one row per video here")
    es.add_argument("--json", help="write the summary here")
    es.set_defaults(fn=_cmd_eval_shapes)
    st = sub.add_parser("study", help="train variants with one budget, score them, write a table and plots")
    st.add_argument("config", help="a study YAML (e.g. configs/studies/latte-variants.yaml)")
    st.add_argument("--only", action="append", help="run just this variant (repeatable; no report is written)")
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(fn=_cmd_study)
    ef = esub.add_parser("fvd", help="Fréchet Video Distance, StyleGAN-V protocol (docs/evaluation.md)")
    ef.add_argument("--real", required=True, help="folder of real videos (first --clips usable ones, random offsets)")
    ef.add_argument("--fake", required=True, help="folder of generated videos (moviola sample --out-dir), from frame 0")
    ef.add_argument("--detector", required=True, help="local I3D file: i3d_torchscript.pt or an I3D state dict")
    ef.add_argument("--detector-sha256", help="expected SHA-256 of the detector (overrides the pinned one)")
    ef.add_argument("--clips", type=int, default=2048)
    ef.add_argument("--frames", type=int, default=16)
    ef.add_argument("--stride", type=int, default=1, help="take every N-th frame (StyleGAN-V _subsample8f: 8)")
    ef.add_argument("--resolution", type=int, help="centre-crop and resize frames to this first (Latte: 256)")
    ef.add_argument("--seed", type=int, default=0, help="seed of the real clips' random offsets")
    ef.add_argument("--batch-size", type=int, default=16)
    ef.add_argument("--no-cache", action="store_true", help="recompute the real-set statistics")
    ef.add_argument("--device", default="cpu")
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
    ei.add_argument("--batch-size", type=int, default=50)
    ei.add_argument("--device", default="cpu")
    ei.add_argument("--json", help="write the result here")
    ei.set_defaults(fn=_cmd_eval_fid)
    return p


def _cmd_study(args: argparse.Namespace) -> int:
    from moviola.study import load_study, run_study

    study = load_study(args.config)
    out = run_study(study, only=args.only, quiet=args.quiet, log=lambda m: print(m, file=sys.stderr))
    for r in out["variants"]:
        a = r["scores"].get("all", {})
        print(f"{r['name']}: loss {r['final_loss']:.4f}, colour {a.get('colour_acc', 0):.2f}, "
              f"shape {a.get('shape_acc', 0):.2f}, direction {a.get('direction_acc', 0):.2f}, "
              f"match {a.get('match_rate', 0):.2f}")
    if not args.only:
        print(f"wrote {study.out_dir}/README.md, results.json, loss.png, scores.png")
    return 0


def _cmd_eval_vae(args: argparse.Namespace) -> int:
    from moviola.eval.vae_eval import evaluate_autoencoder

    result = evaluate_autoencoder(args.autoencoder, videos=args.videos, shapes=args.shapes, frames=args.frames,
                                  size=args.size, stride=args.stride, batch_size=args.batch_size,
                                  chunk_frames=args.chunk_frames, tile_size=args.tile_size, device=args.device)
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
    detector = load_detector(args.detector, sha256=args.detector_sha256, device=resolve_device(args.device))
    result = fvd(args.real, args.fake, detector, clips=args.clips, frames=args.frames, stride=args.stride,
                 resolution=args.resolution, seed=args.seed, batch_size=args.batch_size, use_cache=not args.no_cache)
    return _report(result, args.json)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the CLI read like its errors: one line, no source location."""
    print(f"moviola: warning: {_one_line(str(message))}", file=sys.stderr if file is None else file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"moviola: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("moviola: error: out of memory (ask for fewer or smaller videos, or a smaller batch)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from moviola.training.trainer import CheckpointWriteFailed, TrainingDiverged  # already imported if raised

        if "out of memory" in str(e) or "can't allocate memory" in str(e):  # torch's CPU and CUDA allocators
            print(f"moviola: error: out of memory (ask for fewer or smaller videos, or a smaller batch): "
                  f"{_one_line(str(e).strip().splitlines()[0])}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
