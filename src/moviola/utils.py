"""Small helpers shared across the package: devices and precision."""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from pathlib import Path

import torch

# CPU features that run bf16 matmuls in hardware; without them torch emulates bf16 and a bf16
# matmul can be ~300× slower than fp32 (an AVX2-only CPU: 0.3 vs 102 GFLOP/s at 2048²)
_CPU_BF16_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16"}


def resolve_device(name: "str | torch.device" = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch.device.

    Asking for a device this machine does not have is a ``ValueError`` here, not an
    AssertionError from deep inside the first ``.to(device)``.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu or auto")
    return device


@functools.lru_cache(maxsize=None)
def cpu_bf16_features() -> tuple[str, ...]:
    """The bf16 features of this CPU (``AVX512_BF16``, ``AMX-BF16``), as the kernel reports them.

    On Linux, ``/proc/cpuinfo``'s flags are the signal: they list a feature only when the kernel
    enables it (AMX needs its support). Elsewhere, torch's CPUID probe
    (``torch.cpu.get_capabilities``; ``torch.backends.cpu.get_cpu_capability()`` only says
    ``AVX512``, with or without bf16). Arm's bf16 is not counted: untested here, fp32 is the safe choice.
    """
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[-1].split())
    else:
        caps = getattr(torch.cpu, "get_capabilities", None)
        flags.update(k for k, on in (caps() if caps is not None else {}).items() if on is True)
    return tuple(name for flag, name in _CPU_BF16_FLAGS.items() if flag in flags)


def native_bf16(device: "str | torch.device") -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matmuls natively, and why (a phrase for a log line)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        if major >= 8:
            return True, f"CUDA device {name} (compute capability {major}.{minor}) runs bf16 natively"
        return False, f"CUDA device {name} (compute capability {major}.{minor}) has no native bf16 (needs 8.0+)"
    if device.type == "mps":
        return False, "bf16 autocast is not used on MPS"
    if device.type != "cpu":
        return False, f"no bf16 detection for {device.type} devices"
    features = cpu_bf16_features()
    capability = torch.backends.cpu.get_cpu_capability()
    if features:
        return True, f"the CPU has {' and '.join(features)} (torch CPU capability {capability})"
    return False, (f"the CPU has no AVX512_BF16 or AMX-BF16 (torch CPU capability {capability}), "
                   "so bf16 matmuls are emulated")


def resolve_precision(precision: str, device: "str | torch.device") -> tuple[str, str]:
    """The precision a run uses (``fp32``, ``bf16``, ``fp16``) and why: ``auto`` is bf16 where the device
    runs it natively (:func:`native_bf16`), fp32 elsewhere; any other value is used as given."""
    if precision != "auto":
        return precision, f"train.precision={precision}"
    native, why = native_bf16(device)
    return ("bf16" if native else "fp32"), f"auto: {why}"


@torch.no_grad()
def bf16_matmul_slowdown(device: "str | torch.device", size: int = 256) -> float:
    """How many times slower a ``size``² matmul runs in bf16 than in fp32 on ``device`` (measured now)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def seconds(dtype: torch.dtype, reps: int) -> float:
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: kernel selection, first-touch allocation
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            x @ y
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / reps

    return seconds(torch.bfloat16, 2) / max(seconds(torch.float32, 8), 1e-9)


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on the given device (bf16 works on CPU too); fp32 is a no-op; ``auto`` is
    resolved by :func:`resolve_precision`."""
    if precision == "auto":
        precision = resolve_precision(precision, device)[0]
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
