"""``moviola train``, ``train-vae``, ``export`` and ``study``: runs that train, and shipping what they made."""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from pathlib import Path

from moviola.cli.common import USER_ERRORS


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a denoiser from a YAML config")
    _add_run_args(t, "configs/shapes/latte-tiny.yaml")
    t.add_argument("--init-from", metavar="PATH", help="an image DiT state dict (.pt): fills the frame-wise layers; "
                                                      "or a moviola checkpoint directory: warm start from all its weights")

    tv = sub.add_parser("train-vae", help="train an autoencoder (frame VAE, causal 3-D VAE, temporal decoder) "
                                          "from a YAML config")
    _add_run_args(tv, "configs/shapes/causal-vae-32.yaml")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="write a checkpoint's weights + config alone, for shipping")
    x.add_argument("checkpoint", help="a checkpoint directory or a run directory (its newest checkpoint)")
    x.add_argument("out", help="output directory (config.json + model.safetensors)")
    x.add_argument("--weights", choices=["ema", "model"], default="ema")
    x.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    x.set_defaults(fn=_cmd_export)


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("study", help="train variants with one budget, score them, write a table and plots")
    st.add_argument("config", help="a study YAML (e.g. configs/studies/latte-variants.yaml)")
    st.add_argument("--only", action="append", help="run just this variant (repeatable; no report is written)")
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(fn=_cmd_study)


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
