"""W.A.L.T training step: window attention vs full attention as the token count grows (issue 15).

    python benchmarks/walt_windows.py --threads 1 --markdown            # frames grow ×1, ×4, ×16
    python benchmarks/walt_windows.py --grow size --base 2 8 8           # or the frame size

A *step* is forward + backward of a tiny W.A.L.T (``size: tiny`` dims: width 64, 4 layers = 2 SW + 2 STW,
4 heads, QK-norm, relative bias, AdaLN-LoRA r = 2, p = 1, no conditions) on one random latent clip
(batch 1, 4 channels): ``mse(model(x_t, t), target).backward()`` with the grads set to None first. No
optimizer step, no data, no EMA. Each grid gets its own models with ``pos_grid`` = that grid (as a model
trained at that length), so nothing is interpolated at run time.

Models (``--models``, the first two by default):

- ``window``: the default windows. SW = one frame (1×h×w), STW = all frames × h/2 × w/2.
- ``full``: both windows are the whole clip (T×h×w): every layer is full attention over the clip.
- ``stw_full``: the config's own "full" STW window (``spatiotemporal_window = [T, h, w]``, the paper's
  window ablation); SW stays one frame.
- ``fixed``: STW windows of the base grid's size (T0 × h/2 × w/2 tokens at ×1), tiled over the longer
  clip; a window whose size does not grow with the clip.

All models of a grid have the same weights, copied from the ``window`` one, except the relative-bias
tables, whose shape depends on the window (each starts trunc-normal, std 0.02, as in training). Every
weight is perturbed off its zero initialization so no branch is trivially zero.

Timing: ``--warmup`` steps of each model, then ``--repeats`` rounds in which the models of a grid take
turns step by step (so background load hits them alike); the median is reported. FLOPs: one extra
forward + backward under ``FlopCounterMode`` (matmul-like ops and attention, as in
``benchmarks/train_step.py``, whose counter this reuses).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over one step. On CPU, PyTorch keeps no
allocator statistics (``torch.accelerator.memory_stats`` needs an accelerator) and ``tracemalloc`` does
not see tensor storage (c10 allocates it outside Python's allocator), so it is the growth of the process's
resident set over one warm step: the kernel's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` right before the step) minus the RSS just before it. This runs after all
timing, with glibc's mmap threshold pinned at 128 KiB (``mallopt``), so a freed tensor leaves the
resident set at once and one step's peak does not hide under the heap of an earlier one. Without a
resettable high-water mark it falls back to ``ru_maxrss`` growth (only the largest step is right).

The reading: ``growth`` is the step time at ×k over the time at ×1, and ``÷ tokens`` divides it by k;
1.0 means linear in the token count, k means quadratic. ``full/window`` > 1 means the window model is
faster; the crossover is where it passes 1 (log-interpolated between measured grids).
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import (MatmulProbe, current_rss_mb, flop_counter, peak_rss_mb, release_memory,  # noqa: E402
                        reset_peak_rss, sync)

from moviola.config import ConditionsConfig, WaltConfig  # noqa: E402
from moviola.models.walt import Walt  # noqa: E402

KINDS = ("window", "full", "stw_full", "fixed")
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclasses.dataclass(frozen=True)
class WholeClipWindows(WaltConfig):
    """Both the SW and the STW window are the whole clip: full attention in every layer (the SW window of
    WaltConfig is one frame by construction, so this is the benchmark's own config)."""

    def train_windows(self):
        grid = self.token_grid()
        return grid, grid

    def windows(self, grid):
        return tuple(grid), tuple(grid)


def grids(base: tuple[int, int, int], scales: list[int], grow: str) -> list[tuple[int, int, int]]:
    T, h, w = base
    out = []
    for s in scales:
        if grow == "frames":
            out.append((T * s, h, w))
        else:
            r = math.isqrt(s)
            if r * r != s:
                raise SystemExit(f"--grow size needs square scales (1, 4, 16, ...), got {s}")
            out.append((T, h * r, w * r))
    return out


def build(kind: str, grid: tuple[int, int, int], base: tuple[int, int, int], dims: dict, channels: int) -> Walt:
    T, h, w = grid
    common = dict(pos_grid=grid, **dims)
    if kind == "window":
        cfg = WaltConfig(**common)
    elif kind == "stw_full":
        cfg = WaltConfig(spatiotemporal_window=grid, **common)
    elif kind == "fixed":
        cfg = WaltConfig(spatiotemporal_window=(base[0], base[1] // 2, base[2] // 2), **common)
    elif kind == "full":
        cfg = WholeClipWindows(**common)
    else:
        raise SystemExit(f"unknown model {kind!r}: one of {KINDS}")
    torch.manual_seed(0)
    return Walt(cfg, ConditionsConfig(), channels)


def same_weights(models: dict[str, Walt]) -> dict[str, int]:
    """Copy the window model's weights into the others wherever the shapes match; perturb all alike.
    Returns, per model, how many tensors kept their own values (the relative-bias tables)."""
    ref = models["window"]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        own = {}
        src = ref.state_dict()
        for kind, m in models.items():
            kept = 0
            for name, t in m.state_dict().items():
                if name in src and src[name].shape == t.shape:
                    t.copy_(src[name])
                else:
                    kept += 1
            own[kind] = kept
    return own


def window_of(model: Walt, grid) -> tuple:
    return model.config.windows(grid)


def measure(args, device: torch.device) -> dict:
    dims = dict(hidden_size=args.hidden, depth=args.depth, num_heads=args.heads, relative_bias=args.relative_bias)
    base = tuple(args.base)
    all_grids = grids(base, args.scales, args.grow)
    B, C = args.batch, args.channels
    results = {"grids": [], "memory_method": None}
    built = []
    for scale, grid in zip(args.scales, all_grids):
        models = {k: build(k, grid, base, dims, C).to(device).train() for k in args.models}
        kept = same_weights(models)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(B, C, *grid, generator=g).to(device)
        target = torch.randn(B, C, *grid, generator=g).to(device)
        t = torch.randint(0, 1000, (B,), generator=g).to(device)

        def step(model, x=x, t=t, target=target):
            model.zero_grad(set_to_none=True)
            F.mse_loss(model(x, t), target).backward()

        flops = {}
        for kind, m in models.items():
            with flop_counter() as counter:  # also the first warm-up step
                step(m)
            flops[kind] = counter.get_total_flops()
            for _ in range(args.warmup):
                step(m)
        times = {k: [] for k in models}
        for _ in range(args.repeats):
            for kind, m in models.items():
                sync(device)
                t0 = time.perf_counter()
                step(m)
                sync(device)
                times[kind].append(time.perf_counter() - t0)
        row = dict(scale=scale, grid=list(grid), tokens=B * math.prod(grid),
                   windows={k: [list(w) for w in window_of(m, grid)] for k, m in models.items()},
                   own_tensors=kept, params={k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
                   times=times, ms={k: 1e3 * statistics.median(v) for k, v in times.items()},
                   gflop={k: v / 1e9 for k, v in flops.items()})
        results["grids"].append(row)
        built.append((row, models, step))
        if not args.quiet:
            print(f"  ×{scale} {'×'.join(map(str, grid))}: " +
                  ", ".join(f"{k} {row['ms'][k]:.0f} ms" for k in models), file=sys.stderr, flush=True)

    # peak memory, after all timing (the allocator setting below would change the timings)
    if device.type == "cuda":
        results["memory_method"] = "torch.cuda.max_memory_allocated over one step, minus the allocation before it"
        for row, models, step in built:
            row["peak_mb"] = {}
            for kind, m in models.items():
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step(m)
                row["peak_mb"][kind] = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
        return results
    pinned = False
    if sys.platform.startswith("linux"):
        try:
            pinned = ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1
        except OSError:
            pass
    hwm = reset_peak_rss()
    results["memory_method"] = (
        ("RSS growth over one warm step: VmHWM (reset via /proc/self/clear_refs) minus VmRSS before the step"
         if hwm else "ru_maxrss growth (no resettable VmHWM): only the largest step is right")
        + ("; glibc mmap threshold pinned at 128 KiB" if pinned else "; glibc mmap threshold not pinned"))
    for row, models, step in built:
        row["peak_mb"] = {}
        for kind, m in models.items():
            m.zero_grad(set_to_none=True)
            release_memory()
            reset_peak_rss()
            before = current_rss_mb()
            step(m)
            row["peak_mb"][kind] = peak_rss_mb(hwm) - before
            m.zero_grad(set_to_none=True)
    return results


def crossover(rows: list[dict], a: str, b: str) -> str:
    """Where b's step time passes a's (b/a crosses 1 going up), log-interpolated in the token count."""
    ratios = [(r["tokens"], r["ms"][b] / r["ms"][a]) for r in rows]
    if ratios[0][1] >= 1:
        return f"{b} is already slower than {a} at the smallest grid ({ratios[0][0]:,} tokens, {b}/{a} = {ratios[0][1]:.2f})"
    for (n0, q0), (n1, q1) in zip(ratios, ratios[1:]):
        if q0 < 1 <= q1:
            f = math.log(q0) / (math.log(q0) - math.log(q1))  # where log(ratio) reaches 0
            n = math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
            return f"{b} becomes slower than {a} at about {n:,.0f} tokens (between {n0:,} and {n1:,})"
    return f"{b} stays faster than {a} up to {ratios[-1][0]:,} tokens ({b}/{a} = {ratios[-1][1]:.2f} there)"


def report(args, res: dict, header: list[str]) -> None:
    rows, kinds = res["grids"], args.models
    first = rows[0]
    for line in header:
        print(line)
    print(f"peak memory: {res['memory_method']}")
    print()
    cols = ["×", "grid T×h×w", "tokens", "model", "SW / STW window", "ms/step", "time growth", "÷ token growth",
            "GFLOP/step", "peak MB", "time / window", "MB / window"]
    table = []
    for r in rows:
        k_tok = r["tokens"] / first["tokens"]
        for k in kinds:
            growth = r["ms"][k] / first["ms"][k]
            table.append([f"{r['scale']}", "×".join(map(str, r["grid"])), f"{r['tokens']:,}", k,
                          " / ".join("×".join(map(str, w)) for w in r["windows"][k]), f"{r['ms'][k]:.0f}",
                          f"{growth:.2f}", f"{growth / k_tok:.2f}", f"{r['gflop'][k]:.2f}", f"{r['peak_mb'][k]:.0f}",
                          f"{r['ms'][k] / r['ms']['window']:.2f}",
                          f"{r['peak_mb'][k] / max(r['peak_mb']['window'], 1e-9):.2f}"])
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("| " + " | ".join("---" if c in ("model", "grid T×h×w", "SW / STW window") else "---:" for c in cols) + " |")
        for cells in table:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for cells in table:
            print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print()
    last = rows[-1]
    k_tok = last["tokens"] / first["tokens"]
    print(f"token growth ×1 → ×{k_tok:g}; step time growth, its ratio to the token growth, and the growth "
          "exponent (log time / log tokens, ×1 → largest):")
    for k in kinds:
        growth = last["ms"][k] / first["ms"][k]
        fgrowth = last["gflop"][k] / first["gflop"][k]
        print(f"- {k}: time ×{growth:.1f} ({growth / k_tok:.2f}× the token growth, exponent "
              f"{math.log(growth) / math.log(k_tok):.2f}); FLOPs ×{fgrowth:.1f} ({fgrowth / k_tok:.2f}×)")
    goal = last["ms"]["window"] / first["ms"]["window"] / k_tok if "window" in kinds else None
    if goal is not None:
        print(f"goal (window time grows at most 1.2× faster than the tokens): {goal:.2f} → "
              f"{'met' if goal <= 1.2 else 'NOT met'}")
    for k in ("full", "stw_full"):
        if k in kinds:
            print(f"crossover: {crossover(rows, 'window', k)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grow", choices=["frames", "size"], default="frames",
                    help="grow the latent frames (default) or the latent frame size")
    ap.add_argument("--base", type=int, nargs=3, default=[4, 8, 8], metavar=("T", "H", "W"),
                    help="the ×1 latent grid (default 4 8 8: 256 tokens)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="token-count multiples")
    ap.add_argument("--models", nargs="+", choices=KINDS, default=["window", "full"])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4, help="layers (SW + STW pairs × 2)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--channels", type=int, default=4, help="latent channels")
    ap.add_argument("--no-relative-bias", dest="relative_bias", action="store_false",
                    help="model.relative_bias=false (the bias's gradient keeps SDPA off its fused CPU kernel)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per model after the counted one")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per model (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--json", type=Path, default=None, help="write every step time here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if "window" not in args.models:
        args.models = ["window", *args.models]  # the reference of every ratio and of the shared weights
    args.models = list(dict.fromkeys(args.models))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.time()

    probe = MatmulProbe(device, "fp32")
    peak_start = probe(0.5)
    header = [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  torch {torch.__version__}  "
        f"device {device} ({platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        f"CPU capability (torch.backends.cpu.get_cpu_capability()): {torch.backends.cpu.get_cpu_capability()}",
    ]
    if not args.quiet:
        print(f"matmul peak fp32 {peak_start / 1e9:.0f} GFLOP/s; measuring ...", file=sys.stderr, flush=True)
    res = measure(args, device)
    peak_end = probe(0.5)
    header += [
        f"matmul peak fp32 ({probe.n}×{probe.n} torch.mm, GFLOP/s at start → end): "
        f"{peak_start / 1e9:.0f} → {peak_end / 1e9:.0f}",
        f"W.A.L.T width {args.hidden}, {args.depth} layers, {args.heads} heads, relative bias "
        f"{'on' if args.relative_bias else 'off'}, batch {args.batch}, {args.channels} latent channels, grow {args.grow} from {'×'.join(map(str, args.base))}; forward + backward; median of "
        f"{args.repeats} steps after {1 + args.warmup} warm-up, models alternating  [{time.time() - started:.0f} s]",
    ]
    report(args, res, header)
    if args.json:
        args.json.write_text(json.dumps(dict(args={k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in vars(args).items()},
                                             header=header, peak_fp32=[peak_start, peak_end], **res), indent=1))


if __name__ == "__main__":
    main()
