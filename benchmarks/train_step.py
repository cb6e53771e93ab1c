"""Latte training-step throughput, model FLOP utilization and peak memory.

    python benchmarks/train_step.py                              # tiny, demo, S/2 in fp32 and bf16
    python benchmarks/train_step.py --sizes S/2 --precision bf16 --steps 10 --markdown

A *training step* is what ``moviola train`` does minus data loading, grad clipping and EMA:
``training_losses`` (cosine schedule with zero terminal SNR, v-prediction) under the precision's
autocast, ``loss.mean().backward()``, ``AdamW.step()`` and ``zero_grad``, on a fixed random batch.

FLOPs. One full step is run under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matmul-like ops exactly from their shapes (mm, addmm, bmm, convolution, attention), forward and
backward. Element-wise work (norms, modulation, GELU, the loss, AdamW) is not counted: these are
*model* FLOPs, the numerator of MFU. PyTorch registers no formula for the CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward), so we add one: PyTorch's SDPA
forward formula, and twice that for the backward. The count then matches the analytic one
(nanoGPT's / PaLM's MFU formula with a video attention term):

    step FLOPs ≈ 6 · P_tok · tokens  +  Σ_blocks 12 · (B·G) · L² · D

``P_tok`` are the weights applied to every token (qkv, proj and MLP of each block, the patch
embedding, the final linear): 2 FLOPs per multiply-add, ×3 for the forward and the two backward
matmuls (input and weight gradients). A block attends over B·G sequences of length L (spatial:
G = T frames, L = N patches; temporal: G = N, L = T); per sequence that is 4·L²·D forward (QKᵀ and
PV) and 8·L²·D backward (dP, dV, dQ, dK), whichever SDPA backend runs. The adaLN and timestep
matmuls run per (B, T), not per token; they are counted but negligible. The flash backward's
recomputation of QKᵀ is not counted: MFU counts the model's FLOPs, not the implementation's.
E.g. demo (D = 192, 8 blocks, B = 2, 2048 tokens): 6 · 3.56 M · 2048 = 43.7 G + attention 1.5 G
+ adaLN 0.3 G = 45.6 GFLOP, which is what the counter reports. ``--sdpa math`` forces PyTorch's
math attention backend (still ``F.scaled_dot_product_attention``) to compare with the fused one.

Utilization. Achieved FLOP/s = step FLOPs / step time. It is divided by this machine's matmul
FLOP/s *in the same precision and thread count*, measured with a 2048² ``torch.mm`` in the same
process right before each timed step (~0.25 s). The (threads, precision) pairs take turns step
by step. "% of peak" is the median over steps of each step's ratio to its own probe; steps/s and
GFLOP/s use the median step time. A steadily shared machine slows a probe and its step alike, so
the ratio is the number to compare across runs, not the absolute ones. It is not load-proof:
with every core busy, a step made of ~2000 small multi-threaded ops loses far more than one big
matmul (each op waits at a barrier for its slowest, possibly descheduled, thread), so under load
compare thread counts with ``--threads 1 2`` rather than trusting a 2-thread ratio.

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` during one step, minus what was allocated
before the model was built: weights, AdamW state, grads, activations. On CPU each config runs in a
fresh subprocess (so nothing of another config stays resident): the peak RSS of one step (VmHWM,
reset through ``/proc/self/clear_refs`` right before it, after ``malloc_trim``) minus the RSS just
before it, plus the bytes of the weights and AdamW state that persist across steps. Measuring the
growth within a warm step keeps out the library code and kernel caches that the first steps page
in. Without a resettable VmHWM it falls back to ``ru_maxrss`` minus the RSS before the model was
built (which includes them).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

# name -> model kwargs, data shape (C, T, H, W) and batch size. The batches are small enough that a
# step takes about a second on 2 CPU cores. Any "<size>/<patch>" of moviola's registry also works,
# on 4×16×16×16 latents.
CONFIGS: dict[str, dict] = {
    "tiny": dict(size="tiny", patch_size=4, data=(3, 16, 32, 32), batch=4,
                 note="registry tiny, pixel space"),
    "demo": dict(size="tiny", hidden_size=192, depth=8, num_heads=6, patch_size=4, num_classes=48,
                 data=(3, 16, 32, 32), batch=2, note="configs/shapes/latte-tiny.yaml"),
    "S/2": dict(size="S", patch_size=2, data=(4, 16, 16, 16), batch=1, note="Latte-S/2 on SD-VAE latents"),
}
DEFAULT_SIZES = ["tiny", "demo", "S/2"]
MM_SIZE = {"cpu": 2048, "cuda": 8192}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def config_for(name: str) -> dict:
    if name in CONFIGS:
        return CONFIGS[name]
    from moviola.config import LATTE_SIZES

    size, _, patch = name.removeprefix("Latte-").partition("/")
    if size not in LATTE_SIZES or not patch.isdigit():
        raise SystemExit(f"unknown size {name!r}: use one of {list(CONFIGS)} or <size>/<patch> with size in "
                         f"{list(LATTE_SIZES)}")
    return dict(size=size, patch_size=int(patch), data=(4, 16, 16, 16), batch=1, note="latents")


# ---------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """This machine's matmul FLOP/s right now: ``torch.mm`` of two n×n matrices (n = 2048 on CPU)."""

    def __init__(self, device: torch.device, precision: str):
        self.device = device
        self.n = n = MM_SIZE.get(device.type, 2048)
        self.a = torch.randn(n, n, device=device).to(DTYPES[precision])
        self.b = torch.randn(n, n, device=device).to(DTYPES[precision])
        self.out = torch.empty_like(self.a)  # reused, so probing does not churn the allocator
        self()  # warm-up: thread pool, kernel selection

    def __call__(self, seconds: float = 0.25) -> float:
        """Median FLOP/s over at least 2 calls and ``seconds``."""
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 2 or (time.perf_counter() - start < seconds and len(times) < 200):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return 2 * self.n ** 3 / statistics.median(times)


def release_memory() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back, so RSS is honest
        except OSError:
            pass


# ---------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0) so VmHWM covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: use the peak so far as the baseline
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return kb / 1024


def peak_rss_mb(hwm_was_reset: bool) -> float:
    kb = _status_kb("VmHWM") if hwm_was_reset else None
    if kb is None:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
    return kb / 1024


# ---------------------------------------------------------------------------------------- FLOPs
def flop_counter():
    """FlopCounterMode that also knows the CPU flash-attention kernels (PyTorch has no formula for them)."""
    from torch.utils import flop_counter as fc

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        # Twice the forward: dV, dP, dQ, dK. (PyTorch's SDPA backward formula also counts the flash
        # kernel's recomputation of QKᵀ; the math backend does not recompute, and MFU counts neither.)
        return 2 * fc.sdpa_flop_count(query, key, value)

    custom = {}
    for op, formula in (("_scaled_dot_product_flash_attention_for_cpu", fwd),
                        ("_scaled_dot_product_flash_attention_for_cpu_backward", bwd)):
        if hasattr(torch.ops.aten, op):
            custom[getattr(torch.ops.aten, op)] = formula
    return fc.FlopCounterMode(display=False, custom_mapping=custom)


def sdpa_backend(name: str):
    """Context that restricts F.scaled_dot_product_attention to one backend ("auto": PyTorch chooses)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[name])


# ---------------------------------------------------------------------------------------- worker
def run_config(name: str, precisions: list[str], threads: list[int], steps: int, device: torch.device,
               breakdown: bool, sdpa: str = "auto") -> list[dict]:
    """Measure one config in every precision (and CPU thread count) in this process; a dict per pair.

    The (threads, precision) pairs are interleaved step by step, and every timed step comes right
    after a matmul probe with the same precision and threads, so a change in the background load
    hits every pair, and both terms of each ratio, alike.
    """
    from moviola.conditioning import Conditioning
    from moviola.config import ConditionsConfig, LatteConfig
    from moviola.diffusion.losses import training_losses
    from moviola.diffusion.schedule import NoiseSchedule
    from moviola.models.latte import Latte
    from moviola.utils import autocast

    spec = config_for(name)
    # the named size, with the dims the spec gives instead
    model_cfg = LatteConfig(size=spec["size"], patch_size=spec["patch_size"],
                            **{k: spec[k] for k in ("hidden_size", "depth", "num_heads", "mlp_ratio") if k in spec})
    C, T, H, W = spec["data"]
    B = spec["batch"]
    num_classes = spec.get("num_classes", 0)

    torch.manual_seed(0)
    probes = {prec: MatmulProbe(device, prec) for prec in precisions}
    release_memory()
    mem_base = torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda" else current_rss_mb()

    model = Latte.from_config(model_cfg, ConditionsConfig(num_classes=num_classes), C).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    schedule = NoiseSchedule.from_name("cosine", zero_terminal_snr=True)
    x0 = torch.rand(B, C, T, H, W, device=device) * 2 - 1
    cond = Conditioning(labels=torch.randint(0, num_classes, (B,), device=device)) if num_classes else None
    g = torch.Generator().manual_seed(0)

    def step(precision: str) -> None:
        t = torch.randint(0, schedule.num_timesteps, (B,), generator=g).to(device)
        with autocast(device, precision), sdpa_backend(sdpa):
            terms = training_losses(model, schedule, x0, t, cond, prediction="v")
        terms["loss"].float().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    default_threads = torch.get_num_threads()
    # Count once: autocast changes dtypes, not shapes. This is also the first warm-up step (it
    # allocates AdamW's state).
    with flop_counter() as counter:
        step(precisions[0])
    flops = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    peak_mb = {}
    # Weights and AdamW's moments live across steps; grads (set to None) and activations do not.
    state_mb = sum(t.nbytes for t in [*model.parameters(), *(v for st in optimizer.state.values()
                                                              for v in st.values() if torch.is_tensor(v))]) / 2 ** 20
    for prec in precisions:  # a warm-up step in each precision, which also measures the peak memory
        release_memory()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step(prec)
            peak_mb[prec] = torch.cuda.max_memory_allocated(device) / 2 ** 20 - mem_base
        elif reset_peak_rss():
            rss_before = current_rss_mb()
            step(prec)
            peak_mb[prec] = state_mb + peak_rss_mb(True) - rss_before
        else:  # no resettable high-water mark: the process's peak RSS since before the model was built
            step(prec)
            peak_mb[prec] = peak_rss_mb(False) - mem_base

    pairs = [(th, prec) for th in threads for prec in precisions]
    times = {pair: [] for pair in pairs}
    peaks = {pair: [] for pair in pairs}
    for _ in range(steps):
        for th, prec in pairs:
            if device.type == "cpu":
                torch.set_num_threads(th)
            peaks[th, prec].append(probes[prec]())
            t0 = time.perf_counter()
            step(prec)
            sync(device)
            times[th, prec].append(time.perf_counter() - t0)

    rows = []
    for th, prec in pairs:
        ratios = [flops / dt / peak for dt, peak in zip(times[th, prec], peaks[th, prec])]
        step_s = statistics.median(times[th, prec])
        if device.type == "cpu":
            torch.set_num_threads(th)
        rows.append(dict(
            config=name, note=spec["note"], sdpa=sdpa, params=params, batch=B, data=list(spec["data"]),
            tokens=B * T * (H // spec["patch_size"]) * (W // spec["patch_size"]), precision=prec,
            threads=th if device.type == "cpu" else None, steps=steps, step_s=step_s, step_times=times[th, prec],
            steps_per_s=1 / step_s, flops_per_step=flops, flops_by_op=by_op, achieved_flops=flops / step_s,
            matmul_flops=statistics.median(peaks[th, prec]), matmul_probes=peaks[th, prec],
            frac_of_peak=statistics.median(ratios), peak_mem_mb=peak_mb[prec],
            time_split=profile_step(lambda: step(prec), device) if breakdown else None))
    torch.set_num_threads(default_threads)
    return rows


# Buckets for the profile: self time of each aten op, by what kind of work it is.
_BUCKETS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution_backward")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("optimizer", ("_foreach_", "adamw", "aten::_fused_adamw")),
)


def profile_step(step, device: torch.device) -> dict[str, float]:
    """Fraction of the profiled self time per kind of op in one step (matmul, attention, optimizer, other)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    totals = {name: 0.0 for name, _ in _BUCKETS} | {"other": 0.0}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):  # autograd nodes, optimizer wrappers: their time is in the aten ops
            continue
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        name = ev.key.lower()
        bucket = next((b for b, keys in _BUCKETS if any(k.lower() in name for k in keys)), "other")
        totals[bucket] += t
    total = sum(totals.values()) or 1.0
    return {k: v / total for k, v in totals.items()}


# ---------------------------------------------------------------------------------------- driver
COLUMNS = ("config", "params", "tokens/step", "precision", "threads", "steps/s", "ms/step", "GFLOP/step",
           "achieved GFLOP/s", "matmul peak GFLOP/s", "% of peak", "peak mem MB")


def row_cells(r: dict) -> list[str]:
    return [r["config"], f"{r['params'] / 1e6:.2f}M", f"{r['tokens']:,} (B={r['batch']})", r["precision"],
            str(r["threads"] or "-"),
            f"{r['steps_per_s']:.2f}", f"{r['step_s'] * 1e3:.0f}", f"{r['flops_per_step'] / 1e9:.1f}",
            f"{r['achieved_flops'] / 1e9:.1f}", f"{r['matmul_flops'] / 1e9:.0f}", f"{100 * r['frac_of_peak']:.1f}",
            f"{r['peak_mem_mb']:.0f}"]


def format_table(rows: list[dict], markdown: bool) -> str:
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join(" --- " if i < 1 or i == 3 else " ---: " for i in range(len(COLUMNS))) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(c)))
                     for c in cells)


def format_split(rows: list[dict], markdown: bool) -> str:
    keys = ("matmul", "attention", "optimizer", "other")
    cells = [["config", "precision", "threads", *[f"{k} %" for k in keys]]]
    cells += [[r["config"], r["precision"], str(r["threads"] or "-"),
               *[f"{100 * r['time_split'][k]:.0f}" for k in keys]] for r in rows if r.get("time_split")]
    if len(cells) == 1:
        return ""
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "| --- | --- | ---: |" + " ---: |" * len(keys))
        return "\n".join(lines)
    return "\n".join("  ".join(f"{x:>12}" for x in c) for c in cells)


def run_worker_subprocess(name: str, args, script: str = __file__, extra: tuple[str, ...] = ()):
    """Run ``script --worker name`` in a fresh process (so peak memory is its own) and parse its RESULT line."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", name, "--precision", *args.precision,
           "--steps", str(args.steps), "--device", args.device, "--threads", *map(str, args.threads), *extra]
    if args.breakdown:
        cmd.append("--breakdown")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the worker for {name} failed with exit code {proc.returncode}")
    line = next(l for l in reversed(proc.stdout.splitlines()) if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def speedup_lines(rows: list[dict], fast: str = "bf16", slow: str = "fp32") -> list[str]:
    """Per config: how much faster a step got in ``fast`` than in ``slow``, next to how much faster matmuls got."""
    out = []
    by_key = {(r["config"], r["threads"], r["precision"]): r for r in rows}
    for name, th in dict.fromkeys((r["config"], r["threads"]) for r in rows):
        if (name, th, fast) in by_key and (name, th, slow) in by_key:
            f, s = by_key[(name, th, fast)], by_key[(name, th, slow)]
            where = f"{name}" + (f" ({th} threads)" if th else "")
            out.append(f"{where}: step {s['step_s'] / f['step_s']:.2f}×, "
                       f"matmul {f['matmul_flops'] / s['matmul_flops']:.2f}×")
    return out


def resolve_device(name: str) -> torch.device:
    from moviola.utils import resolve_device as resolve

    device = resolve(name)
    return torch.device("cpu") if device.type == "mps" else device  # no bf16 matmul peak story on MPS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES,
                   help=f"configs: {', '.join(CONFIGS)} or <registry size>/<patch> (default: %(default)s)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--steps", type=int, default=5, help="timed steps per config (median is reported)")
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()],
                   help="CPU thread counts to compare, interleaved (default: torch's, %(default)s)")
    p.add_argument("--sdpa", choices=["auto", "math", "flash"], default="auto",
                   help="attention backend of F.scaled_dot_product_attention (default: PyTorch's choice)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda[:N]")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--breakdown", action="store_true", help="also profile one step per row: share of time per kind of op")
    p.add_argument("--json", metavar="PATH", help="also write every measurement to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if "fp16" in args.precision and device.type != "cuda":
        raise SystemExit("fp16 autocast needs CUDA; use bf16 on CPU")

    if args.worker:  # one config, every precision, in a fresh process, so its peak RSS is its own
        rows = run_config(args.worker, args.precision, args.threads, args.steps, device, args.breakdown, args.sdpa)
        print("RESULT " + json.dumps(rows), flush=True)
        return
    for name in args.sizes:
        config_for(name)  # fail early on an unknown name

    started = datetime.datetime.now().astimezone()
    peaks_start = {prec: MatmulProbe(device, prec)(seconds=1.0) for prec in args.precision}
    rows = []
    for name in args.sizes:
        for r in run_worker_subprocess(name, args, extra=("--sdpa", args.sdpa)):
            rows.append(r)
            print(f"  {name:6s} {r['precision']} threads={r['threads']}: {r['step_s'] * 1e3:8.0f} ms/step, "
                  f"{100 * r['frac_of_peak']:5.1f} % "
                  f"of {r['matmul_flops'] / 1e9:.0f} GFLOP/s", file=sys.stderr, flush=True)
    peaks_end = {prec: MatmulProbe(device, prec)(seconds=1.0) for prec in args.precision}
    elapsed = (datetime.datetime.now().astimezone() - started).total_seconds()

    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or platform.machine())
    threads = torch.get_num_threads()
    print(f"{started:%Y-%m-%d %H:%M %Z}  torch {torch.__version__}  device {device} ({dev_name}, "
          f"{os.cpu_count()} CPUs, {threads} torch threads by default)  attention backend: {args.sdpa}  "
          f"median of {args.steps} timed steps  [{elapsed:.0f} s]")
    n = MM_SIZE.get(device.type, 2048)
    peak_line = ", ".join(f"{prec} {peaks_start[prec] / 1e9:.0f} → {peaks_end[prec] / 1e9:.0f}"
                          for prec in args.precision)
    print(f"matmul peak ({n}×{n} torch.mm, GFLOP/s at start → end): {peak_line}")
    print()
    print(format_table(rows, args.markdown))
    speedups = speedup_lines(rows)
    if speedups:
        print("\nbf16 speedup over fp32 (medians of interleaved steps and probes):")
        print("\n".join(("- " if args.markdown else "  ") + line for line in speedups))
    split = format_split(rows, args.markdown)
    if split:
        print("\nshare of profiled op time (self time of aten ops in one step):\n")
        print(split)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=started.isoformat(), torch=torch.__version__, device=str(device), cpus=os.cpu_count(),
                           threads=threads, matmul_start=peaks_start, matmul_end=peaks_end, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
