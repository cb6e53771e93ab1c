"""``moviola train``, ``train-vae``, ``export`` and ``study``: runs that train, and shipping what they made."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

from moviola.cli.common import USER_ERRORS, check_output, check_text_file

# the keys a resumed run may change, each only when the user names it (--set, --steps, --device,
# --precision): extending a run (steps, cadences) or moving it (device, precision, workers). The
# batches, weights and optimizer state stay the run's; any other change would make it another run,
# which belongs in another run directory.
RESUMABLE_KEYS = ("train.steps", "train.checkpoint_every", "train.log_every", "train.sample_every",
                  "train.sample_steps", "train.keep_last", "train.device", "train.precision",
                  "train.max_bad_steps", "train.max_failed_saves", "data.num_workers")


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a denoiser from a YAML config")
    _add_run_args(t, "configs/shapes/latte-tiny.yaml")
    t.add_argument("--init-from", metavar="PATH", help="an image DiT state dict (.pt): fills the frame-wise layers; "
                                                      "or a moviola checkpoint directory: warm start from all its weights")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training on N processes on this machine: runs torchrun --standalone "
                        "--nproc_per_node N -m moviola train ... --set train.parallel=ddp (docs/scale.md)")

    tv = sub.add_parser("train-vae", help="train an autoencoder (frame VAE, causal 3-D VAE, temporal decoder) "
                                          "from a YAML config")
    _add_run_args(tv, "configs/shapes/causal-vae-32.yaml")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="write a checkpoint's weights + config alone, for shipping")
    x.add_argument("checkpoint", help="a checkpoint directory or a run directory (its newest checkpoint)")
    x.add_argument("out", help="output directory (config.json + model.safetensors)")
    x.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="a training checkpoint's EMA weights or its raw model weights")
    x.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16",
                   help="the weights' dtype in the export (a train-vae run's autoencoder is written as it was trained)")
    x.set_defaults(fn=_cmd_export)


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("study", help="train variants with one budget, score them, write a table and plots")
    st.add_argument("config", help="a study YAML (e.g. configs/studies/latte-variants.yaml)")
    st.add_argument("--only", action="append", help="run just this variant (repeatable; no report is written)")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(fn=_cmd_study)


def _add_run_args(p: argparse.ArgumentParser, example: str) -> None:
    """The arguments of a training run, shared by ``train`` and ``train-vae`` (both run ``_cmd_train``)."""
    p.add_argument("config", nargs="?", help=f"YAML config (e.g. {example})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=3e-4")
    p.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's newest checkpoint, with the run's saved config "
                        "(RUN_DIR/config.json; CONFIG may be left out). A CONFIG or --set that differs from it is "
                        "refused, naming the keys, except these keys named with --set (or --steps, --device, "
                        "--precision), which extend or move a run: " + ", ".join(RESUMABLE_KEYS))
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="shorthand for --set train.precision=...; auto (the config default): bf16 where the "
                        "device runs it natively, else fp32")
    p.add_argument("--steps", type=int, help="shorthand for --set train.steps=...")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_train)


def _overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The ``key=value`` overrides of a train command, and the keys the user named (--set and the shorthands)."""
    from moviola.config import parse_override

    named = list(args.set or [])
    if args.precision:
        named.append(f"train.precision={args.precision}")
    if args.steps is not None:
        named.append(f"train.steps={args.steps}")
    if args.device:
        named.append(f"train.device={args.device}")
    # train-vae is train with the autoencoder task (train.task names what a run trains)
    implied = ["train.task=autoencoder"] if args.command == "train-vae" else []
    return implied + named, [parse_override(item)[0] for item in named]


def nproc_command(argv: list[str], nproc: int) -> list[str]:
    """The torchrun command that ``moviola train ... --nproc N`` (``argv``: the arguments after ``moviola``) runs."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "moviola", *rest, "--set", "train.parallel=ddp"]


def _cmd_train(args: argparse.Namespace) -> int:
    from moviola.config import load_config
    from moviola.training import trainer_for

    if getattr(args, "nproc", None) is not None:
        if args.nproc < 1:
            raise ValueError(f"--nproc must be 1 or more (got {args.nproc})")
        command = nproc_command(sys.argv[1:], args.nproc)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)  # (does not return)
    check_text_file(args.config, "CONFIG")
    overrides, named = _overrides(args)
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        cfg, run_dir = _resume_config(args.config, run_dir, overrides, named)
    else:
        if args.config is None:
            raise ValueError("train needs a CONFIG file (or --resume --run-dir DIR of an existing run)")
        cfg = load_config(args.config, overrides)
    run_dir = run_dir or Path("runs") / cfg.name
    check_output(str(run_dir), "--run-dir" if args.run_dir else "the run directory", directory=True)
    created = None  # the topmost directory this command creates: removed again on a user error
    if not run_dir.exists():
        created = run_dir
        while not created.parent.exists():
            created = created.parent
    try:
        trainer = trainer_for(cfg)(cfg, run_dir, resume=args.resume, quiet=args.quiet,
                          init_from=getattr(args, "init_from", None))
        last = trainer.train()
        if trainer.world_size > 1:  # train.parallel=ddp: all ranks are done; leave the process group together
            from moviola.training import distributed

            distributed.destroy(wait=True)
    except USER_ERRORS:
        if created is not None and not any((run_dir / "checkpoints").glob("step_*")):
            shutil.rmtree(created, ignore_errors=True)
        raise
    if trainer.rank != 0:  # (train.parallel=ddp) rank 0 reports for the run
        return 128 + signal.Signals[trainer.stopped_by].value if trainer.stopped_by else 0
    print(json.dumps({"run_dir": str(run_dir), **{k: v for k, v in last.items() if k != "time"}}))
    if trainer.stopped_by:
        print(f"moviola: stopped by {trainer.stopped_by} at step {trainer.step}; checkpoint written; "
              f"continue with: moviola {args.command} --resume --run-dir {run_dir}", file=sys.stderr)
        return 128 + signal.Signals[trainer.stopped_by].value
    return 0


def _resume_config(config: Optional[str], run_dir: Optional[Path], overrides: list[str],
                   named: list[str]) -> tuple:
    """The config a resumed run continues with: its saved one, changed only in :data:`RESUMABLE_KEYS`
    the user named; any other difference from a CONFIG or --set is refused, naming the keys."""
    from moviola.config import absolute_paths, config_from_json, load_config, to_dict
    from moviola.config import config_changes

    given = load_config(config, overrides) if config is not None else None
    if run_dir is None:
        if given is None:
            raise ValueError("--resume needs --run-dir DIR (the run to continue), or a CONFIG whose run is "
                             "runs/<its name>")
        run_dir = Path("runs") / given.name
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        if given is None:
            raise FileNotFoundError(f"--resume: {saved_path} not found: {run_dir} is not a moviola run directory "
                                    "(give the directory a train command wrote, or a CONFIG to start a new run)")
        return given, run_dir  # the run loop says what is missing (no checkpoint, ...)
    saved = absolute_paths(config_from_json(saved_path))
    new = given if given is not None else load_config(data=to_dict(saved), overrides=overrides)
    changes = config_changes(saved, new)
    if "train.task" in changes and not _is_named("train.task", named):
        raise ValueError(f"--resume: {run_dir} is a {saved.train.task} run: continue it with "
                         f"moviola {_command(saved)} --resume --run-dir {run_dir}")
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS or not _is_named(k, named)}
    if refused:
        diff = ", ".join(f"{k} (saved {old!r}, now {value!r})" for k, (old, value) in refused.items())
        what = ("the CONFIG with --set" if config is not None and named else "the CONFIG" if config is not None
                else "--set")
        raise ValueError(f"--resume: {what} differs from the run's saved config {saved_path} in {diff}; a resumed "
                         f"run continues its saved config (as it was: moviola {_command(saved)} --resume --run-dir "
                         f"{run_dir}), or start a new run in another --run-dir. Only {', '.join(RESUMABLE_KEYS)} "
                         "may change on resume, each named with --set")
    if changes:
        print(f"moviola: note: resuming {run_dir} with " + ", ".join(f"{k} {old!r} → {value!r}"
                                                                     for k, (old, value) in changes.items()),
              file=sys.stderr)
        if "train.steps" in changes and new.train.lr_schedule == "cosine":
            warnings.warn("train.steps changed with train.lr_schedule=cosine: the learning rate follows the new "
                          "schedule from the resumed step on (it jumps where the two schedules differ)")
    return new, run_dir


def _is_named(key: str, named: list[str]) -> bool:
    """Whether the user named ``key`` (or a section holding it) with --set or a shorthand flag."""
    return any(key == n or key.startswith(n + ".") for n in named)


def _command(cfg) -> str:
    return "train-vae" if cfg.train.task == "autoencoder" else "train"


def _cmd_export(args: argparse.Namespace) -> int:
    from moviola.config import config_from_json
    from moviola.io.checkpoint import check_kind, resolve_checkpoint
    from moviola.training.export import export_checkpoint
    from moviola.training.vae_trainer import export_autoencoder

    check_kind(args.checkpoint, ("diffusion", "autoencoder_run"), "a diffusion or train-vae run to export")
    check_output(args.out, "", directory=True)
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

    check_text_file(args.config, "CONFIG")
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
