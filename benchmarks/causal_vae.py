"""Causal 3-D VAE: encode + decode throughput and peak memory for 17, 65 and 257 frames,
chunked (a carried convolution cache) vs one pass, side by side in one run.

Each measurement runs in a fresh subprocess, so the peak resident memory (``ru_maxrss``) it
reports belongs to that one call; the table gives the peak above the resident memory just before
the call (interpreter, model and input video loaded): the working memory of encode + decode,
including the decoded output (12.6 MB at 257 frames of 64×64). The promise of chunking: memory at 257 frames within 1.3× of memory at 17.

    python benchmarks/causal_vae.py            # the shapes-64 architecture at 64×64 (CPU-sized)
    python benchmarks/causal_vae.py --size 128 --base 128 --latent 8   # W.A.L.T's 17×128×128 -> 5×16×16×8
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def measure(frames: int, size: int, base: int, latent: int, chunk: int) -> dict:
    from moviola.autoencoders.causal_vae import CausalVAE

    torch.manual_seed(0)
    vae = CausalVAE(base_channels=base, channel_mults=(1, 2, 2, 4), temporal_downsample=(False, True, True),
                    latent_channels=latent, norm_groups=min(32, base), num_res_blocks=1).eval()
    video = torch.rand(1, 3, frames, size, size) * 2 - 1
    kw_enc = {"chunk_frames": chunk} if chunk else {}
    kw_dec = {"chunk_latents": chunk // 4} if chunk else {}
    base_rss = _current_rss_kb()  # model, input and interpreter: what any run holds before computing
    t0 = time.perf_counter()
    with torch.no_grad():
        z = vae.encode(video, **kw_enc)
        out = vae.decode(z, **kw_dec)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == video.shape
    return {"frames": frames, "chunk": chunk, "seconds": seconds, "frames_per_s": frames / seconds,
            "peak_mb": (peak - base_rss) / 1024, "latent": list(z.shape)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--base", type=int, default=32)
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--chunk", type=int, default=16, help="frames per encoder chunk (a multiple of 4)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = p.parse_args()
    if args.one:
        frames, chunk = map(int, args.one.split(","))
        print(json.dumps(measure(frames, args.size, args.base, args.latent, chunk)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; causal VAE base {args.base}, "
          f"mults (1,2,2,4), {args.size}×{args.size}, {args.latent} latent channels")
    print("| frames | mode | seconds | frames/s | peak memory above baseline (MB) | latent |")
    print("|---:|---|---:|---:|---:|---|")
    results = {}
    for frames in (17, 65, 257):
        for chunk in (args.chunk, 0):
            cmd = [sys.executable, __file__, "--size", str(args.size), "--base", str(args.base), "--latent",
                   str(args.latent), "--one", f"{frames},{chunk}"]
            # a fixed mmap threshold: glibc otherwise raises it after the first large free and keeps later
            # freed buffers on its heap, so ru_maxrss would count memory that is no longer live
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
            results[(frames, chunk)] = r
            mode = f"chunked ({chunk})" if chunk else "one pass"
            print(f"| {frames} | {mode} | {r['seconds']:.2f} | {r['frames_per_s']:.1f} | {r['peak_mb']:.0f} | "
                  f"{'×'.join(map(str, r['latent'][1:]))} |")
    c17, c257 = results[(17, args.chunk)]["peak_mb"], results[(257, args.chunk)]["peak_mb"]
    o17, o257 = results[(17, 0)]["peak_mb"], results[(257, 0)]["peak_mb"]
    print(f"\nchunked: peak at 257 frames / peak at 17 = {c257 / max(c17, 1e-9):.2f}× (promise: ≤ 1.3×); "
          f"one pass: {o257 / max(o17, 1e-9):.2f}×")


if __name__ == "__main__":
    main()
