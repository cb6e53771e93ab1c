"""Studies: train a set of variants with one budget, score them, and write a table and plots.

A study file (YAML; every key below, nothing else)::

    name: latte-variants              # names docs/studies/<name>/ and runs/studies/<name>/
    steps: 1500                       # the one training budget, every variant
    set: [train.batch_size=8]         # overrides for every variant (optional)
    variants:                         # name -> a config file, or {config: FILE, set: [KEY=VALUE, ...]}
      v1-interleaved: configs/shapes/ablation/base.yaml
      v2-late-fusion: {config: configs/shapes/ablation/base.yaml, set: [model.layout=late_fusion]}
      v3: {config: FILE, set: [...], init_from: PATH}   # a variant's own starting weights (or null: none)
    init_from: runs/videoldm-image    # optional: every variant starts from these weights (train --init-from)
    eval: {per_class: 1, steps: 25, cfg: 4.0, seed: 0, sampler: ddim}   # the Moving Shapes score
    runs_dir: runs/studies/latte-variants   # optional (this default)
    out_dir: docs/studies/latte-variants    # optional (this default)

``moviola study FILE`` trains each variant in ``<runs_dir>/<variant>`` (a finished run is reused,
an interrupted one resumed, so a study can be stopped and restarted at any point), scores its
EMA weights by the Moving Shapes rules (cached in the run as ``study_eval.json``, keyed by the
settings and the step), and writes into ``out_dir``: ``README.md`` (the table, the settings and
the command), ``results.json``, ``loss.png`` (training loss curves) and ``scores.png`` (accuracy
per variant). A run directory that holds a different config than the study asks for, or more
steps than its budget, is an error, never silently reused. Raising ``steps`` continues each run
from its last checkpoint; with ``train.lr_schedule: cosine`` that changes the schedule's length
mid-run (the shipped studies use a constant rate).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from moviola.config import ConfigError, RunConfig, config_from_json, load_config, to_dict, yaml_load
from moviola.data import check_classes, known_classes
from moviola.diffusion.samplers import SAMPLERS

_TOP = ("name", "steps", "set", "variants", "eval", "runs_dir", "out_dir", "reading", "init_from")
_EVAL = ("per_class", "steps", "cfg", "seed", "sampler", "val_clips", "frames")


@dataclass(frozen=True)
class StudyEval:
    per_class: int = 1
    steps: int = 25
    cfg: Optional[float] = None  # None = each variant's sample.cfg
    seed: int = 0
    sampler: str = "ddim"
    val_clips: int = 192  # the held-out denoising loss on this many test clips (eval/denoising.py); 0: none
    frames: Optional[int] = None  # frames per scored video (None: each variant's data.frames); e.g. video
    # samples from variants fine-tuned on single images


@dataclass(frozen=True)
class Variant:
    name: str
    config: str
    set: tuple[str, ...] = ()
    init_from: Optional[str] = None  # the weights the run starts from (train --init-from); None: a fresh model


@dataclass(frozen=True)
class Study:
    name: str
    steps: int
    variants: tuple[Variant, ...]
    set: tuple[str, ...] = ()
    eval: StudyEval = field(default_factory=StudyEval)
    runs_dir: str = ""
    out_dir: str = ""
    source: str = ""  # the study file, for the reproduce command
    reading: str = ""  # where the results are read against the paper (a markdown link target), if anywhere


def _check_keys(got: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in got:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{where} must be a list of KEY=VALUE strings")
    return tuple(value)


def load_study(path: Union[str, Path]) -> Study:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    tree = yaml_load(path.read_text()) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    _check_keys(tree, _TOP, str(path))
    for key in ("name", "steps", "variants"):
        if key not in tree:
            raise ConfigError(f"{path}: missing {key!r}")
    name, steps = tree["name"], tree["steps"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise ConfigError(f"{path}: name must be a plain directory name, got {name!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"{path}: steps must be a positive integer, got {steps!r}")
    raw = tree["variants"]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: variants must be a non-empty mapping of name -> config")
    variants = []
    for vname, spec in raw.items():
        where = f"{path}: variants.{vname}"
        if not isinstance(vname, str) or any(c in vname for c in "/\\\0") or vname in (".", ".."):
            raise ConfigError(f"{where}: a variant name must be a plain directory name")
        if isinstance(spec, str):
            spec = {"config": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a config file or {{config: FILE, set: [...]}}")
        _check_keys(spec, ("config", "set", "init_from"), where)
        if "config" not in spec:
            raise ConfigError(f"{where}: missing 'config'")
        init_from = spec.get("init_from", tree.get("init_from"))
        if init_from is not None and (not isinstance(init_from, str) or not init_from):
            raise ConfigError(f"{where}: init_from must be a path (a run directory, checkpoint or image DiT), "
                              f"got {init_from!r}")
        variants.append(Variant(vname, str(spec["config"]), _overrides(spec.get("set"), f"{where}.set"), init_from))
    ev = tree.get("eval") or {}
    if not isinstance(ev, dict):
        raise ConfigError(f"{path}: eval must be a mapping")
    _check_keys(ev, _EVAL, f"{path}: eval")
    study_eval = StudyEval(**ev)
    if study_eval.per_class < 1 or study_eval.steps < 1 or study_eval.sampler not in SAMPLERS or not (
            isinstance(study_eval.val_clips, int) and (study_eval.val_clips == 0 or study_eval.val_clips >= 2)) or not (
            study_eval.frames is None or isinstance(study_eval.frames, int) and study_eval.frames >= 1):
        raise ConfigError(f"{path}: eval needs per_class >= 1, steps >= 1, val_clips 0 (none) or >= 2 (a paired "
                          f"difference needs two clips), frames >= 1 (or none) "
                          f"and a sampler of {', '.join(SAMPLERS)}")
    return Study(name=name, steps=steps, variants=tuple(variants), set=_overrides(tree.get("set"), f"{path}: set"),
                 eval=study_eval, runs_dir=str(tree.get("runs_dir") or Path("runs") / "studies" / name),
                 out_dir=str(tree.get("out_dir") or Path("docs") / "studies" / name), source=str(path),
                 reading=str(tree.get("reading") or ""))


def variant_config(study: Study, v: Variant) -> RunConfig:
    """The run config of one variant, with every check that needs no data or weights (the class count too)."""
    cfg = load_config(v.config, [*study.set, *v.set, f"train.steps={study.steps}"])
    known = known_classes(cfg.data)
    if known is not None:
        check_classes(cfg.conditions, *known)
    return cfg


def _comparable(cfg: dict) -> dict:
    """A config without the keys a study may change between invocations (the budget)."""
    out = json.loads(json.dumps(cfg))
    out["train"].pop("steps", None)
    return out


def run_study(study: Study, only: Optional[list[str]] = None, quiet: bool = False, log=print) -> dict:
    """Train, score and report every variant (or the ``only`` ones); returns the results dict."""
    from moviola.io.checkpoint import list_checkpoints

    names = [v.name for v in study.variants]
    for n in only or []:
        if n not in names:
            raise ConfigError(f"--only {n}: no such variant (the study has {', '.join(names)})")
    configs = {v.name: variant_config(study, v) for v in study.variants}  # every config checked before any compute
    for v in study.variants:
        if v.init_from is not None and not Path(v.init_from).exists():
            raise ConfigError(f"variant {v.name!r}: init_from {v.init_from} does not exist (train that run first)")
    results = []
    for v in study.variants:
        if only and v.name not in only:
            continue
        cfg = configs[v.name]
        run_dir = Path(study.runs_dir) / v.name
        saved = run_dir / "config.json"
        # compared as parsed configs: keys added to moviola since the run started take their defaults
        if saved.is_file() and _comparable(to_dict(config_from_json(saved))) != _comparable(to_dict(cfg)):
            raise ConfigError(f"{run_dir} was trained with another config than variant {v.name!r} of the study "
                              "asks for now; delete that run directory (or rename the study) to retrain it")
        kept = list_checkpoints(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else []
        last_step = int(kept[-1].name.split("_")[-1]) if kept else 0
        start = _start_record(v)  # the weights the run starts from, as they are now
        recorded = run_dir / "study_start.json"
        if kept and (json.loads(recorded.read_text()) if recorded.is_file() else {"init_from": None}) != start:
            raise ConfigError(f"{run_dir} was started from other weights than variant {v.name!r} starts from now "
                              f"(init_from {v.init_from}, or its weights changed since); delete that run directory "
                              "to retrain it")
        if last_step > study.steps:
            raise ConfigError(f"{run_dir} has trained {last_step} steps, more than the study's budget of {study.steps}: "
                              "its scores would not be those of the budget; raise steps or delete the run directory")
        if last_step == study.steps:
            log(f"study {study.name}: {v.name}: trained ({last_step} steps), reused")
        else:
            log(f"study {study.name}: {v.name}: {'resuming at step ' + str(last_step) if kept else 'training'}")
            from moviola.training import trainer_for

            trainer = trainer_for(cfg)(cfg, run_dir, resume=bool(kept), quiet=quiet,
                                       init_from=None if kept else v.init_from)
            if not kept:  # what a later invocation compares before reusing or resuming this run
                recorded.write_text(json.dumps(start) + "\n")
            trainer.train()
            if trainer.stopped_by:
                raise KeyboardInterrupt(f"stopped by {trainer.stopped_by}; run the study again to continue")
        results.append(_variant_result(study, v, cfg, run_dir, log))
    if not only:  # the difference is from the study's first variant, which --only may leave out
        _pair_validation(results)
    out = {"study": study.name, "steps": study.steps, "eval": dataclasses.asdict(study.eval),
           "command": f"moviola study {study.source}", "variants": results}
    if not only:
        write_report(study, out)
    return out


def _variant_result(study: Study, v: Variant, cfg: RunConfig, run_dir: Path, log) -> dict:
    from moviola.config import autoencoder_latent_channels
    from moviola.eval.shapes_eval import evaluate_checkpoint
    from moviola.models.registry import build_model
    from moviola.io.checkpoint import list_checkpoints

    step = int(list_checkpoints(run_dir / "checkpoints")[-1].name.split("_")[-1])
    settings = {**{k: v for k, v in dataclasses.asdict(study.eval).items()
                   if k != "val_clips" and not (k == "frames" and v is None)}, "step": step}
    cache = run_dir / "study_eval.json"
    scores = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("settings") == settings:
            scores = stored["scores"]
    if scores is None:
        log(f"study {study.name}: {v.name}: scoring ({study.eval.per_class} per class, {study.eval.steps} steps)")
        t0 = time.perf_counter()
        e = study.eval
        r = evaluate_checkpoint(run_dir, per_class=e.per_class, steps=e.steps, cfg=e.cfg, sampler=e.sampler,
                                seed=e.seed, device="cpu" if cfg.train.device == "auto" else cfg.train.device,
                                num_frames=e.frames)
        scores = {split: r[split] for split in ("all", "seen", "holdout") if split in r}
        scores["seconds"] = time.perf_counter() - t0
        cache.write_text(json.dumps({"settings": settings, "scores": scores}, indent=2) + "\n")
    val = _validation(study, v, cfg, run_dir, step, log)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
    tail = [loss for _, loss in losses[-max(1, len(losses) // 10):]]
    speeds = sorted(r["it_s"] for r in rows if "it_s" in r)
    params = sum(p.numel() for p in build_model(cfg.model, cfg.conditions, autoencoder_latent_channels(cfg.autoencoder)).parameters())
    return {"name": v.name, "config": v.config, "set": list(v.set), "init_from": v.init_from,
            "run_dir": str(run_dir), "step": step,
            "params": params, "final_loss": sum(tail) / len(tail) if tail else None,
            "it_s_median": speeds[len(speeds) // 2] if speeds else None, "loss_curve": losses, "scores": scores,
            "val": val}


def _start_record(v: Variant) -> dict:
    """Where variant ``v`` starts: its ``init_from`` and a digest of that checkpoint's weights file (the EMA
    weights a warm start reads), so a run started from older weights is not reused as if from the new ones."""
    if v.init_from is None:
        return {"init_from": None}
    import hashlib

    from moviola.io.checkpoint import resolve_checkpoint, weights_name

    path = Path(v.init_from)
    if path.is_dir():
        ckpt = resolve_checkpoint(path)
        path = ckpt / f"{weights_name(ckpt, 'ema')}.safetensors"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"init_from": v.init_from, "sha256": digest.hexdigest()}


def _pair_validation(results: list[dict]) -> None:
    """Each variant's held-out loss minus the first variant's, paired clip by clip (the same draws), with its
    standard error; the per-clip losses stay in the run directories (``study_val.json``)."""
    from moviola.eval.denoising import paired_difference

    first = next((r["val"] for r in results if r.get("val")), None)
    for r in results:
        val = r.get("val")
        if not val:
            continue
        mean, se = paired_difference(first["per_clip"], val["per_clip"]) if first is not val else (0.0, 0.0)
        r["val"] = {"val_loss": val["val_loss"], "clips": val["clips"], "seed": val["seed"],
                    "minus_first": mean, "minus_first_se": se}


def _validation(study: Study, v: Variant, cfg: RunConfig, run_dir: Path, step: int, log) -> Optional[dict]:
    """The variant's held-out denoising loss (eval/denoising.py), cached in the run as ``study_val.json``."""
    e = study.eval
    if not e.val_clips:
        return None
    settings = {"clips": e.val_clips, "seed": e.seed, "step": step}
    cache = run_dir / "study_val.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("settings") == settings:
            return stored["val"]
    from moviola.eval.denoising import validation_loss

    log(f"study {study.name}: {v.name}: held-out denoising loss ({e.val_clips} test clips)")
    val = validation_loss(run_dir, clips=e.val_clips, seed=e.seed,
                          device="cpu" if cfg.train.device == "auto" else cfg.train.device)
    cache.write_text(json.dumps({"settings": settings, "val": val}) + "\n")
    return val


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: Optional[float], fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def write_report(study: Study, out: dict) -> Path:
    folder = Path(study.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot_losses(out, folder / "loss.png")
    _plot_scores(out, folder / "scores.png")
    e = study.eval
    lines = [f"# Study: {study.name}", "",
             f"{len(out['variants'])} variants, {study.steps} training steps each; scored by the Moving Shapes rules on "
             f"{e.per_class} video(s) per class{f' of {e.frames} frames' if e.frames else ''} (48 classes; seen and the 8 hold-out combinations), "
             f"{e.sampler.upper()} {e.steps} steps, guidance {e.cfg if e.cfg is not None else 'of each config'}, "
             f"seed {e.seed}.", "",
             "| variant | params | final loss | held-out loss | − first (± 2 SE) | it/s | colour % | shape % | "
             "direction % | match % | hold-out match % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["variants"]:
        s, val = r["scores"], r.get("val") or {}
        a, h = s.get("all", {}), s.get("holdout", {})
        diff = ("–" if "minus_first" not in val else
                f"{val['minus_first']:+.4f} ± {2 * val['minus_first_se']:.4f}")
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f} M | {_num(r['final_loss'], '.4f')} | "
                     f"{_num(val.get('val_loss'), '.4f')} | {diff} | "
                     f"{_num(r['it_s_median'], '.2f')} | {_pct(a.get('colour_acc'))} | {_pct(a.get('shape_acc'))} | "
                     f"{_pct(a.get('direction_acc'))} | {_pct(a.get('match_rate'))} | {_pct(h.get('match_rate'))} |")
    lines += ["", "Final loss: the mean training loss over the last tenth of the logged steps. Held-out loss: the "
              f"training objective of the EMA weights on {e.val_clips} test clips at the same timesteps and noise for "
              "every variant (eval/denoising.py); − first: the paired difference from the first variant, clip by "
              "clip, ± two standard errors (an interval that excludes 0 is a difference these clips resolve). "
              "it/s: the median training speed (depends on what else ran on the machine).", "",
              "![loss curves](loss.png)", "", "![scores](scores.png)", ""]
    if study.reading:
        lines += [f"The reading of these results against the paper: [{study.reading}]({study.reading}).", ""]
    lines += ["Variants:", ""]
    for r in out["variants"]:
        extra = (f" with `{' '.join(r['set'])}`" if r["set"] else "") + (
            f", started from `{r['init_from']}`" if r.get("init_from") else "")
        lines.append(f"- `{r['name']}`: `{r['config']}`{extra}")
    lines += ["", "Reproduce (finished runs are reused, interrupted ones resumed):", "", "```bash",
              out["command"], "```", ""]
    (folder / "README.md").write_text("\n".join(lines))
    return folder


def _plot_losses(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for r in out["variants"]:
        pts = r["loss_curve"]
        if not pts:
            continue
        k = max(1, len(pts) // 25)  # moving average over ~4 % of the run, for readability
        steps = [s for s, _ in pts][k - 1:]
        vals = [sum(v for _, v in pts[i - k + 1:i + 1]) / k for i in range(k - 1, len(pts))]
        ax.plot(steps, vals, label=r["name"], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{out['study']}: training loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_scores(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("colour_acc", "colour"), ("shape_acc", "shape"), ("direction_acc", "direction"), ("match_rate", "match")]
    names = [r["name"] for r in out["variants"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4), dpi=100)
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        vals = [100 * (r["scores"].get("all", {}).get(key) or 0) for r in out["variants"]]
        ax.bar([i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))], vals, width, label=label)
    for level, label in ((25, "chance: colour, direction"), (100 / 3, "chance: shape")):
        ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
        ax.text(len(names) - 0.5, level + 0.8, label, ha="right", fontsize=7, color="grey")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("% of videos (Moving Shapes scorer)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{out['study']}: scores after {out['steps']} steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["Study", "StudyEval", "Variant", "load_study", "run_study", "variant_config", "write_report"]
