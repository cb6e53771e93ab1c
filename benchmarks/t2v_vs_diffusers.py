"""Text-to-video Latte training steps: moviola's ``Latte`` against diffusers' ``LatteTransformer3DModel``.

    python benchmarks/t2v_vs_diffusers.py                                   # tiny and small, fp32 and bf16
    python benchmarks/t2v_vs_diffusers.py --config small --steps 10 --markdown --json t2v.json
    python benchmarks/t2v_vs_diffusers.py --config small --steps 1 --breakdown  # time per kind of op

What is measured. The same model twice: a ``LatteTransformer3DModel`` (Latte-1's config:
adaLN-single, cross-attention to text in the spatial blocks, learned sigma, random weights) and
the moviola ``Latte`` made from its state dict by ``moviola.interop.diffusers_latte``
(``moviola convert diffusers-latte``). Both get the same input: latents (B, 4, T, H, W), integer
timesteps (B,), text tokens (B, L, caption_channels) with a mask (row 0 keeps half its tokens).
moviola takes ``Conditioning(text=..., text_mask=...)``; diffusers is called as its pipeline
calls it (``hidden_states``, ``timestep``, ``encoder_hidden_states``,
``enable_temporal_attentions=True``, ``return_dict=False``) plus ``encoder_attention_mask``, in
the form its Latte takes: an additive bias per spatial row, (B·T, 1, L), 0 keep / -10000 drop,
built once outside the timed step. Before anything is timed, the script checks in fp32 that the
two outputs agree (max abs difference < 1e-4), so the benchmark compares equal computations.

A *training step*: the forward under the precision's autocast (fp32: none; bf16: ``torch.autocast``),
MSE loss against a fixed random target (B, 8, T, H, W), ``backward``, ``AdamW.step`` and
``zero_grad``. Each implementation has its own AdamW and starts from the same weights. The two
alternate step by step (moviola, diffusers, moviola, ...), inside the (threads, precision) pairs,
which also take turns; each timed step comes right after a matmul probe in its precision and
thread count (``train_step.py``'s ``MatmulProbe``), so a change in the background load hits both
implementations alike.

FLOPs. One step of each is run under ``FlopCounterMode`` (``train_step.py``'s counter, which also
knows the CPU flash-attention kernels): matmul-like ops, forward and backward, i.e. model FLOPs.
moviola's count is *the* FLOPs of the step, the numerator of both "% of peak" columns, so those
two columns differ exactly as the step times do. diffusers' count is printed beside it, with
whether the two agree within 1% and, if not, the ops where they differ. They are not equal by
construction: diffusers projects the text keys and values once per frame (on its (B·T, L, D)
copy of the text), moviola once per video; and moviola embeds the timestep per (B, T), diffusers
per B. Both are the same model; it is work one implementation does and the other skips. The
script computes both terms from the shapes (``known_flop_difference``) and prints how far the
counts are apart without them: 0.00% on tiny, i.e. everything else is the same matmuls. The
per-frame text K/V makes diffusers' count 1.3% higher on tiny; on small it should be about 0.8%
(from the shapes: +3.3 of ≈400 GFLOP), as frames of more patches per text token dilute it.

How to read it. ``theirs/ours`` is diffusers' median ms/step over moviola's: above 1, moviola is
faster. Compare this ratio and the "% of peak" columns across runs and machines, not the
absolute times: on a shared CPU both implementations slow down, but their ratio stays (they
alternate step by step). ``--json PATH`` keeps every step time and probe, and the paired ratio
(the median over rounds of each diffusers step over the moviola step right before it), which is
the more robust number under fluctuating load. ``--breakdown`` profiles one more step of each
(``torch.profiler``): the self time of the aten ops by kind of op (attention, matmul, norm, copies
and layout, reductions, element-wise, optimizer, other) and by phase (forward, backward,
optimizer), the number of aten calls, and the top ops. Profiled self times are inflated by the
profiler and come from a single step: compare the two columns and the shares, not the totals
with the timed steps, and take them on an idle machine.

What would make moviola 1.5× faster
-----------------------------------
Measured 2026-11-22 on the idle 2-core CPU (``--config small --breakdown``, bf16, 2 threads):
moviola 1603 ms/step against diffusers' 1996 (1.25×); fp32 2907 vs 2929 ms (1.01×). Of moviola's
profiled bf16 step (1693 ms of aten self time): matmul 1019 ms (60 %, at 60 % of the bf16 matmul
peak), attention 269 ms (16 %; diffusers spends 650 ms there because it runs the CPU flash
kernel in bf16), element-wise 206 ms (12 %), copies/layout 126 ms (7 %), the rest 73 ms.

To be 1.5× faster than diffusers (≈1330 ms, a sixth of moviola's step less) without changing the
math: (1) fuse the adaLN modulate / gate / residual element-wise chains and the GELU
(``torch.compile`` of a block, or hand-fused ops): most of the 206 ms; (2) stop transposing the
token tensor between spatial and temporal blocks (attend over a strided view, or keep the
(B, N, T, D) layout through the temporal MLP): most of the 126 ms of copies; (3) cast q/k/v to fp32
once per attention instead of per call site. Together ≈ 250–300 ms by this breakdown; not yet
implemented or measured. Matmuls are already at 60 % of peak, so larger gains need fewer FLOPs
(e.g. a VAE with more compression), not faster kernels.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402
from train_step import MM_SIZE, MatmulProbe, flop_counter, release_memory, resolve_device, sync  # noqa: E402

# name -> the LatteTransformer3DModel's dims, the latents (C, T, H, W), batch and text (tokens, width).
# ``layers`` counts spatial+temporal pairs, as diffusers' ``num_layers`` (moviola's depth is twice it).
CONFIGS: dict[str, dict] = {
    "tiny": dict(layers=2, heads=2, head_dim=32, patch=2, latents=(4, 8, 16, 16), batch=2, text=(16, 64)),
    "small": dict(layers=4, heads=6, head_dim=64, patch=2, latents=(4, 16, 32, 32), batch=1, text=(32, 128)),
}
IMPLS = ("moviola", "diffusers")
PARITY_TOL = 1e-4
FLOP_TOL = 0.01


# ---------------------------------------------------------------------------------------- models
def diffusers_config(spec: dict) -> dict:
    C, T, H, W = spec["latents"]
    if H != W:
        raise SystemExit("diffusers' Latte builds its positions for square sample_size × sample_size latents")
    D = spec["heads"] * spec["head_dim"]
    # Latte-1's config (maxin-cn/Latte-1 transformer/config.json) at these dims
    return dict(num_attention_heads=spec["heads"], attention_head_dim=spec["head_dim"], in_channels=C,
                out_channels=2 * C, num_layers=spec["layers"], dropout=0.0, cross_attention_dim=D,
                attention_bias=True, sample_size=H, patch_size=spec["patch"], activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                norm_eps=1e-6, caption_channels=spec["text"][1], video_length=T)


def build_pair(spec: dict, device: torch.device):
    """diffusers' model with random weights, and moviola's converted from its state dict."""
    from diffusers import LatteTransformer3DModel

    from moviola.config import load_config
    from moviola.interop.diffusers_latte import diffusers_to_moviola
    from moviola.models.registry import build_model

    torch.manual_seed(0)
    theirs = LatteTransformer3DModel(**diffusers_config(spec))
    with torch.no_grad():  # diffusers zero-initializes some layers (proj_out, ...): make every weight matter
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    info, sd = diffusers_to_moviola(theirs.state_dict(), dict(theirs.config))
    cfg = load_config(data={"model": info["model"], "conditions": info["conditions"]})
    ours = build_model(cfg.model, cfg.conditions, in_channels=spec["latents"][0])
    ours.load_state_dict({k: v.clone() for k, v in sd.items()})  # strict: every tensor has its counterpart
    return ours.to(device).train(), theirs.to(device).train()


def make_inputs(spec: dict, device: torch.device) -> dict:
    C, T, H, W = spec["latents"]
    B, (L, width) = spec["batch"], spec["text"]
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L // 2:] = False  # padding in the first prompt, so the mask matters
    # diffusers' Latte takes the mask as a bias per spatial row: (B·T, 1, L), 0 keep / -10000 drop
    bias = ((~mask).float() * -10000.0)[:, None].repeat_interleave(T, dim=0)
    tensors = dict(x=torch.randn(B, C, T, H, W, generator=g), t=torch.randint(0, 1000, (B,), generator=g),
                   text=torch.randn(B, L, width, generator=g), mask=mask, bias=bias,
                   target=torch.randn(B, 2 * C, T, H, W, generator=g))
    return {k: v.to(device) for k, v in tensors.items()}


def forwards(ours, theirs, inp: dict) -> dict:
    from moviola.conditioning import Conditioning

    cond = Conditioning(text=inp["text"], text_mask=inp["mask"])
    return {
        "moviola": lambda: ours(inp["x"], inp["t"], cond),
        "diffusers": lambda: theirs(hidden_states=inp["x"], timestep=inp["t"], encoder_hidden_states=inp["text"],
                                    encoder_attention_mask=inp["bias"], enable_temporal_attentions=True,
                                    return_dict=False)[0],
    }


# ---------------------------------------------------------------------------------------- worker
def run_config(name: str, precisions: list[str], threads: list[int], steps: int, device: torch.device,
               breakdown: bool) -> dict:
    from moviola.utils import autocast

    spec = CONFIGS[name]
    probes = {prec: MatmulProbe(device, prec) for prec in precisions}
    ours, theirs = build_pair(spec, device)
    inp = make_inputs(spec, device)
    fwd = forwards(ours, theirs, inp)

    with torch.no_grad():  # the same computation: outputs agree in fp32
        out = {impl: fwd[impl]() for impl in IMPLS}
    parity = (out["moviola"] - out["diffusers"]).abs().max().item()
    scale = out["diffusers"].abs().max().item()
    if not parity < PARITY_TOL:
        raise SystemExit(f"{name}: moviola and diffusers disagree in fp32 (max abs diff {parity:.2e}, "
                         f"max |out| {scale:.2f}): not benchmarking different computations")
    del out

    models = {"moviola": ours, "diffusers": theirs}
    optimizers = {impl: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0) for impl, m in models.items()}

    def step(impl: str, precision: str) -> None:
        with autocast(device, precision):
            pred = fwd[impl]()
        F.mse_loss(pred.float(), inp["target"]).backward()
        optimizers[impl].step()
        optimizers[impl].zero_grad(set_to_none=True)

    # Count once each (autocast changes dtypes, not shapes); this is also the first warm-up step,
    # which allocates AdamW's state.
    flops, by_op = {}, {}
    for impl in IMPLS:
        with flop_counter() as counter:
            step(impl, precisions[0])
        flops[impl] = counter.get_total_flops()
        by_op[impl] = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    for prec in precisions:  # a warm-up step in each precision
        for impl in IMPLS:
            step(impl, prec)
    release_memory()

    default_threads = torch.get_num_threads()
    keys = [(th, prec, impl) for th in threads for prec in precisions for impl in IMPLS]
    times = {k: [] for k in keys}
    peaks = {k: [] for k in keys}
    for _ in range(steps):
        for th, prec, impl in keys:  # moviola, diffusers, moviola, ... within each (threads, precision)
            if device.type == "cpu":
                torch.set_num_threads(th)
            peaks[th, prec, impl].append(probes[prec]())
            t0 = time.perf_counter()
            step(impl, prec)
            sync(device)
            times[th, prec, impl].append(time.perf_counter() - t0)

    C, T, H, W = spec["latents"]
    rows = []
    for th in threads:
        for prec in precisions:
            if device.type == "cpu":
                torch.set_num_threads(th)
            row = dict(config=name, spec=spec, params=sum(p.numel() for p in ours.parameters()),
                       params_diffusers=sum(p.numel() for p in theirs.parameters()), batch=spec["batch"],
                       tokens=spec["batch"] * T * (H // spec["patch"]) * (W // spec["patch"]), precision=prec,
                       threads=th if device.type == "cpu" else None, steps=steps, parity_max_abs_diff=parity,
                       parity_max_abs_out=scale, flops_per_step=flops["moviola"],
                       flops_diffusers=flops["diffusers"], flops_by_op=by_op)
            for impl in IMPLS:
                k = (th, prec, impl)
                ratios = [flops["moviola"] / dt / peak for dt, peak in zip(times[k], peaks[k])]
                row[impl] = dict(step_s=statistics.median(times[k]), step_times=times[k],
                                 matmul_flops=statistics.median(peaks[k]), matmul_probes=peaks[k],
                                 frac_of_peak=statistics.median(ratios),
                                 time_split=profile_step(lambda: step(impl, prec), device) if breakdown else None)
            row["theirs_over_ours"] = row["diffusers"]["step_s"] / row["moviola"]["step_s"]
            row["paired_ratio"] = statistics.median(
                d / m for m, d in zip(times[th, prec, "moviola"], times[th, prec, "diffusers"]))
            rows.append(row)
    torch.set_num_threads(default_threads)
    return dict(rows=rows)


# Self time of each aten op, by kind of work. The optimizer's ops are found by their caller
# (``Optimizer.step``): on CPU AdamW runs per tensor, with the same mul/add/lerp/sqrt as the model.
# The others by name: "aten::add" is aten::add and its variants (add_, ...), not aten::addmm;
# a key with a leading "*" matches anywhere in the name. The first kind that matches wins.
_BUCKETS = (
    ("attention", ("*scaled_dot_product", "*flash_attention", "*efficient_attention", "aten::_softmax",
                   "aten::softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                "aten::einsum", "*convolution")),
    ("norm", ("*layer_norm", "*group_norm")),
    ("copy/layout", ("aten::copy", "aten::clone", "aten::contiguous", "aten::cat", "aten::_to_copy", "aten::to",
                     "aten::repeat", "aten::repeat_interleave", "aten::index", "aten::stack", "aten::unbind",
                     "aten::chunk", "aten::split", "aten::narrow", "aten::permute", "aten::transpose", "aten::t",
                     "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::as_strided",
                     "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
                     "aten::unflatten", "aten::flatten", "aten::empty", "aten::zeros", "aten::ones", "aten::full",
                     "aten::fill", "aten::zero", "aten::detach", "aten::alias", "aten::resize", "aten::new")),
    ("reduction", ("aten::sum", "aten::mean", "aten::mse_loss", "aten::any", "aten::max")),
    ("element-wise", ("aten::add", "aten::sub", "aten::rsub", "aten::mul", "aten::div", "aten::neg", "aten::pow",
                      "aten::sqrt", "aten::rsqrt", "aten::exp", "aten::cos", "aten::sin", "aten::tanh",
                      "aten::sigmoid", "aten::gelu", "aten::silu", "aten::threshold", "aten::where",
                      "aten::masked_fill", "aten::bitwise", "aten::logical", "aten::clamp", "aten::arange",
                      "aten::addcmul", "aten::addcdiv", "aten::lerp")),
)


def _kind(name: str) -> str:
    for kind, keys in _BUCKETS:
        if any(k[1:] in name if k[0] == "*" else name == k or name.startswith(k + "_") for k in keys):
            return kind
    return "other"


BUCKET_NAMES = [b for b, _ in _BUCKETS] + ["optimizer", "other"]
PHASES = ("forward", "backward", "optimizer")


def _phase(ev) -> str:
    """forward, backward (under an autograd engine node) or optimizer (under Optimizer.step/zero_grad)."""
    parent = ev.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        if parent.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
        parent = parent.cpu_parent
    return "forward"


def profile_step(step, device: torch.device) -> dict:
    """One step under torch.profiler: self time (ms) of the aten ops per kind and per phase
    (forward, backward, optimizer), the number of aten calls, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    ms = {name: 0.0 for name in BUCKET_NAMES}
    phases = {name: 0.0 for name in PHASES}
    ops: dict[str, list] = {}  # name -> [ms, calls, kind]
    calls = 0
    for ev in prof.events():
        if not ev.name.startswith("aten::"):  # autograd nodes, optimizer wrappers: their time is in the aten ops
            continue
        t = (ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total) / 1e3
        phase = _phase(ev)
        kind = "optimizer" if phase == "optimizer" else _kind(ev.name)
        ms[kind] += t
        phases[phase] += t
        calls += 1
        op = ops.setdefault(f"{ev.name} ({phase[:3]})", [0.0, 0, kind])
        op[0] += t
        op[1] += 1
    top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:12]
    return dict(ms=ms, phases=phases, total_ms=sum(ms.values()), aten_calls=calls,
                top=[dict(op=o, ms=t, calls=c, kind=k) for o, (t, c, k) in top])


# ---------------------------------------------------------------------------------------- driver
COLUMNS = ("config", "params", "tokens/step", "precision", "threads", "moviola ms/step", "diffusers ms/step",
           "theirs/ours", "GFLOP/step", "diffusers GFLOP/step", "matmul peak GFLOP/s", "moviola % of peak",
           "diffusers % of peak")


def row_cells(r: dict) -> list[str]:
    m, d = r["moviola"], r["diffusers"]
    return [r["config"], f"{r['params'] / 1e6:.2f}M", f"{r['tokens']:,} (B={r['batch']})", r["precision"],
            str(r["threads"] or "-"), f"{m['step_s'] * 1e3:.0f}", f"{d['step_s'] * 1e3:.0f}",
            f"{r['theirs_over_ours']:.2f}", f"{r['flops_per_step'] / 1e9:.2f}", f"{r['flops_diffusers'] / 1e9:.2f}",
            f"{statistics.median(m['matmul_probes'] + d['matmul_probes']) / 1e9:.0f}",
            f"{100 * m['frac_of_peak']:.1f}", f"{100 * d['frac_of_peak']:.1f}"]


def format_cells(cells: list[list[str]], markdown: bool, left: int = 1) -> str:
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join(" --- " if i < left else " ---: " for i in range(len(cells[0]))) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) if i < left else c[i].rjust(widths[i]) for i in range(len(c)))
                     for c in cells)


def format_table(rows: list[dict], markdown: bool) -> str:
    return format_cells([list(COLUMNS)] + [row_cells(r) for r in rows], markdown)


def known_flop_difference(spec: dict) -> tuple[float, float]:
    """(diffusers' extra, moviola's extra) FLOPs per step from where the two do different work.

    diffusers projects the text keys and values (``attn2.to_k``, ``to_v``: D -> D each) on the
    (B·T, L, D) per-frame copy of the text, moviola (``cross_attn.kv``) once per video: B·(T-1)·L
    more rows per spatial block, each 2·D·2D FLOPs forward and twice that backward (weight and
    input gradients; the input is the trainable caption projection). moviola embeds the timestep
    per (B, T) (``t_embedder``: 256 -> D -> D, ``adaln_single``: D -> 6D), diffusers per B:
    B·(T-1) more rows, forward and weight gradients, plus the input gradients of the two layers
    after the first (whose input, the sin-cos features, needs none).
    """
    C, T, H, W = spec["latents"]
    B, L, D = spec["batch"], spec["text"][0], spec["heads"] * spec["head_dim"]
    theirs = spec["layers"] * 6 * B * (T - 1) * L * D * 2 * D
    ours = B * (T - 1) * (2 * 2 * 256 * D + 3 * 2 * D * D + 3 * 2 * D * 6 * D)
    return float(theirs), float(ours)


def flop_lines(rows: list[dict]) -> list[str]:
    """Per config: both FLOP counts, whether they agree within FLOP_TOL, and, if not, whether the
    difference is the known one (known_flop_difference) and which ops it is in."""
    out = []
    for r in {r["config"]: r for r in rows}.values():
        ours, theirs = r["flops_per_step"], r["flops_diffusers"]
        rel = theirs / ours - 1
        verdict = "equal within 1%" if abs(rel) <= FLOP_TOL else "NOT equal within 1%"
        out.append(f"{r['config']}: moviola {ours / 1e9:.3f} GFLOP/step, diffusers {theirs / 1e9:.3f} "
                   f"({100 * rel:+.2f}%): {verdict}")
        extra_theirs, extra_ours = known_flop_difference(r["spec"])
        residual = (theirs - extra_theirs) / (ours - extra_ours) - 1
        out.append(f"  known difference: diffusers' per-frame text K/V +{extra_theirs / 1e9:.3f}, moviola's per-frame "
                   f"timestep embedding +{extra_ours / 1e9:.3f} GFLOP; without them the counts differ by "
                   f"{100 * residual:+.2f}%" + ("" if abs(residual) <= FLOP_TOL else " (NOT within 1%)"))
        if abs(rel) > FLOP_TOL:
            a, b = r["flops_by_op"]["moviola"], r["flops_by_op"]["diffusers"]
            for op in sorted(set(a) | set(b)):
                x, y = a.get(op, 0), b.get(op, 0)
                if abs(y - x) > FLOP_TOL * max(x, y):
                    out.append(f"  {op}: moviola {x / 1e9:.3f}, diffusers {y / 1e9:.3f} GFLOP")
    return out


def format_split(rows: list[dict], markdown: bool) -> str:
    cells = [["config", "precision", "threads", "kind", "moviola ms", "moviola %", "diffusers ms", "diffusers %"]]
    for r in rows:
        m, d = r["moviola"]["time_split"], r["diffusers"]["time_split"]
        if not m:
            continue
        where = [r["config"], r["precision"], str(r["threads"] or "-")]
        for k in BUCKET_NAMES:
            cells.append([*where, k, f"{m['ms'][k]:.1f}", f"{100 * m['ms'][k] / (m['total_ms'] or 1):.0f}",
                          f"{d['ms'][k]:.1f}", f"{100 * d['ms'][k] / (d['total_ms'] or 1):.0f}"])
        for k in PHASES:
            cells.append([*where, f"phase: {k}", f"{m['phases'][k]:.1f}",
                          f"{100 * m['phases'][k] / (m['total_ms'] or 1):.0f}", f"{d['phases'][k]:.1f}",
                          f"{100 * d['phases'][k] / (d['total_ms'] or 1):.0f}"])
        cells.append([*where, "total (aten calls)", f"{m['total_ms']:.1f} ({m['aten_calls']})", "100",
                      f"{d['total_ms']:.1f} ({d['aten_calls']})", "100"])
    return format_cells(cells, markdown, left=4) if len(cells) > 1 else ""


def format_top(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for impl in IMPLS:
            split = r[impl]["time_split"]
            if split:
                out.append(f"{r['config']} {r['precision']} threads={r['threads']} {impl}: "
                           + ", ".join(f"{o['op'].removeprefix('aten::')} {o['ms']:.1f} ms/{o['calls']}"
                                       for o in split["top"][:8]))
    return "\n".join(out)


def run_worker_subprocess(name: str, args) -> dict:
    return train_step.run_worker_subprocess(name, args, script=__file__)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="configs to run, each in its own subprocess (default: %(default)s)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation (median is reported)")
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()],
                   help="CPU thread counts to compare, interleaved (default: torch's, %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda[:N]")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile one step of each implementation per row: time per kind of op, top ops")
    p.add_argument("--json", metavar="PATH", help="also write every measurement to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    device = resolve_device(args.device)

    if args.worker:  # one config, both implementations, every precision, in a fresh process
        result = run_config(args.worker, args.precision, args.threads, args.steps, device, args.breakdown)
        print("RESULT " + json.dumps(result), flush=True)
        return

    started = datetime.datetime.now().astimezone()
    rows = []
    for name in args.config:
        result = run_worker_subprocess(name, args)
        r0 = result["rows"][0]
        print(f"  {name}: fp32 parity, max |moviola - diffusers| = {r0['parity_max_abs_diff']:.2e} "
              f"(max |output| {r0['parity_max_abs_out']:.2f}, tolerance {PARITY_TOL:g})", file=sys.stderr, flush=True)
        for r in result["rows"]:
            rows.append(r)
            print(f"  {name:5s} {r['precision']} threads={r['threads']}: moviola "
                  f"{r['moviola']['step_s'] * 1e3:7.0f} ms/step, diffusers {r['diffusers']['step_s'] * 1e3:7.0f}: "
                  f"theirs/ours {r['theirs_over_ours']:.2f} (paired {r['paired_ratio']:.2f})",
                  file=sys.stderr, flush=True)
    elapsed = (datetime.datetime.now().astimezone() - started).total_seconds()

    import diffusers

    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or platform.machine())
    print(f"{started:%Y-%m-%d %H:%M %Z}  torch {torch.__version__}  diffusers {diffusers.__version__}  device {device} "
          f"({dev_name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads by default)  "
          f"median of {args.steps} timed steps each, alternating  [{elapsed:.0f} s]")
    bullet = "- " if args.markdown else "  "
    print("\nfp32 parity (same weights, same input, before timing):")
    for r in {r["config"]: r for r in rows}.values():
        print(f"{bullet}{r['config']}: max |moviola - diffusers| = {r['parity_max_abs_diff']:.2e} "
              f"(max |output| {r['parity_max_abs_out']:.2f}) < {PARITY_TOL:g}")
    print("\nmodel FLOPs per step (FlopCounterMode, forward + backward; the % of peak uses moviola's):")
    print("\n".join(("  " + line if line.startswith("  ") else bullet + line) for line in flop_lines(rows)))
    print(f"\ntheirs/ours > 1: moviola is faster. % of peak: moviola's FLOPs / step time / "
          f"{MM_SIZE.get(device.type, 2048)}² torch.mm FLOP/s in the same precision, probed before each step.\n")
    print(format_table(rows, args.markdown))
    split = format_split(rows, args.markdown)
    if split:
        print("\nprofiled self time of the aten ops in one step, by kind of op:\n")
        print(split)
        print("\ntop ops (self time / calls):")
        print(format_top(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=started.isoformat(), torch=torch.__version__, diffusers=diffusers.__version__,
                           device=str(device), cpus=os.cpu_count(), threads=torch.get_num_threads(), rows=rows),
                      f, indent=1)


if __name__ == "__main__":
    main()
