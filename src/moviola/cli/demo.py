"""``moviola demo``: serve a web page to generate videos and compare models (moviola/demo, docs/demo.md).

``moviola demo [CHECKPOINT ...]`` loads each diffusion checkpoint (default: the shipped ones in ``checkpoints/``
that are diffusion models, not autoencoders) and serves the page on http://127.0.0.1:7860. Safe by default:
bound to 127.0.0.1 (``--host`` to change it), no public link unless ``--share``, files served only from the
output directory (``--out-dir``, default a new temporary directory), one generation at a time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

from moviola.io.checkpoint import checkpoint_kind, check_kind

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="a web page to generate videos and compare models (needs the demo extra: gradio)")
    d.add_argument("checkpoint", nargs="*",
                   help="diffusion checkpoints (or run directories) to offer (default: the diffusion models in "
                        "checkpoints/)")
    d.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on; anything but 127.0.0.1 lets other machines use it")
    d.add_argument("--port", type=int, default=7860, help="the port to listen on")
    d.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    d.add_argument("--out-dir", help="where the videos, uploads and the log go; the page serves files from its "
                                     "served/ subfolder only (default: a new temporary directory)")
    d.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="a training checkpoint's EMA weights or its raw model weights")
    d.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    d.set_defaults(fn=_cmd_demo)


def shipped_checkpoints(root: Optional[Path] = None) -> list[Path]:
    """The diffusion models among the shipped checkpoints: ``checkpoints/`` here, else the repository's."""
    places = [root] if root is not None else [Path.cwd() / "checkpoints",
                                              Path(__file__).resolve().parents[3] / "checkpoints"]
    for place in places:
        if place.is_dir():
            found = [p for p in sorted(place.iterdir()) if p.is_dir() and checkpoint_kind(p).kind == "diffusion"]
            if found:
                return found
    return []


def check_demo_args(args: argparse.Namespace) -> None:
    """What can be refused before anything loads: the port, the output folder."""
    from moviola.cli.common import check_output

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    if not args.host.strip():
        raise ValueError("--host must be an address, e.g. 127.0.0.1")
    check_output(args.out_dir, "--out-dir", directory=True)


def load_models(paths: list[str], weights: str = "ema", device: Optional[str] = None):
    """A DemoModel per checkpoint; an autoencoder, an upsampler or a missing path is a one-line error."""
    import moviola
    from moviola.demo.core import DemoModel, unique_names

    models = []
    for name, path in zip(unique_names(paths), paths):
        check_kind(path, ("diffusion",), "a diffusion model")
        if not Path(path).exists():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        pipe = moviola.load_pipeline(path, weights=weights, device=device)
        if "low_res" in pipe.accepts:
            raise ValueError(f"{path} is an upsampler (it takes a video to upsample): the demo serves models that "
                             "make videos from a prompt or a first frame; use moviola sample --upsample")
        models.append(DemoModel(name, pipe, str(path)))
    return models


def _cmd_demo(args: argparse.Namespace) -> int:
    check_demo_args(args)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError("moviola demo needs gradio: pip install 'moviola[demo]' (or pip install gradio)")
    from moviola.demo.app import build_app, serve
    from moviola.demo.core import Studio

    paths = [str(p) for p in args.checkpoint] or [str(p) for p in shipped_checkpoints()]
    if not paths:
        raise ValueError("no checkpoints given and no diffusion model in checkpoints/: give CHECKPOINT paths")
    models = load_models(paths, weights=args.weights, device=args.device)
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="moviola-demo-"))
    studio = Studio(models, out_dir)
    app = build_app(studio)
    if args.host not in LOOPBACK:
        print(f"moviola: warning: listening on {args.host}: other machines that reach it can use the page",
              file=sys.stderr)
    print(f"moviola demo: {len(models)} model{'s' if len(models) > 1 else ''} "
          f"({', '.join(m.name for m in models)}); videos go to {studio.out_dir}", flush=True)
    serve(app, host=args.host, port=args.port, share=args.share)
    return 0
