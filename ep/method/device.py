"""Where to compute, and in which float format: one decision for the whole package.

bf16 where the hardware does it natively: Ampere-or-newer GPUs (compute capability 8.0+) and CPUs with
avx512_bf16 or AMX (about twice the fp32 forward rate there); fp32 elsewhere. A T4 (7.5) has no native bf16 and
gets fp32; fp16 is never chosen, because Gemma's activations overflow it. ``EP_DTYPE`` (float32 or bfloat16) or
the ``dtype=`` argument of ``ep.load_model`` overrides the choice.

The same decision picks the dtype of the dictionary builder's screening GEMM (`screen_dtype`): without native
bf16 a bf16 GEMM is emulated and runs ~8x slower than fp32 (21 against 163 GFLOP/s on a 2-core AVX2 EPYC), with it
~2x faster. The screen's result is exact either way, so ``EP_DTYPE`` (a choice of model precision) leaves it alone.
``EP_NATIVE_BF16=0`` (or 1) overrides the detection itself, for both: it makes a bf16 machine behave like one
without, e.g. with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``, which keep oneDNN and ATen off the
bf16 instructions but leave /proc/cpuinfo unchanged (benchmarks/bench_official.py --no-bf16 sets all three).

    >>> default_dtype(torch.device("cpu"))  # on a CPU without bf16 instructions
    torch.float32
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

DTYPE_ENV = "EP_DTYPE"
NATIVE_BF16_ENV = "EP_NATIVE_BF16"
_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def native_bf16(device: torch.device, cpuinfo: str | None = None) -> bool:
    """Does ``device`` multiply in bf16 natively? ``$EP_NATIVE_BF16`` (0 / 1) overrides the detection."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_BF16_ENV}={forced!r}: use 0 or 1")
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})
    return False


def default_dtype(device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """bf16 where native, else fp32; ``$EP_DTYPE`` overrides (float32 / bfloat16)."""
    name = os.environ.get(DTYPE_ENV, "").strip().lower()
    if name:
        if name not in _NAMES:
            raise ValueError(f"{DTYPE_ENV}={name!r}: use float32 or bfloat16 (fp16 is not supported: Gemma overflows)")
        return _NAMES[name]
    return torch.bfloat16 if native_bf16(device, cpuinfo) else torch.float32


def screen_dtype(device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """The dtype of the leader clustering's screening GEMM: bf16 where native, else fp32 (not ``$EP_DTYPE``'s)."""
    return torch.bfloat16 if native_bf16(device, cpuinfo) else torch.float32


# Float unary ops that ATen hands to MKL's vector math library (aten/src/ATen/cpu/vml.h, torch 2.13).
VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
           "tan", "tanh", "trunc")


def warm_vml() -> None:
    """Call each VML-backed op once on one element, in this thread, before any op runs on several threads.

    oneMKL picks each VML function's kernel on its first call. When that first call runs on two OpenMP
    threads at once, one thread can run a low-accuracy kernel for its whole chunk (pytorch/pytorch#188792;
    not seen with oneMKL 2025 or later). Here it struck Gemma's rotary ``cos`` in about one process in three:
    one batch came out with errors of up to 1.5e-4 in cos, hence different activations, and the same
    calibration gave θ = 0.25692 or 0.25695 depending on the run. A one-element call runs on the calling
    thread and settles the choice for good; it costs well under a millisecond.
    """
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(one)


# -----------------------------------------------------------------------------
# how many threads the builder runs a batch on (it reads /proc: Linux only; elsewhere torch's own setting)

def _own_running() -> int:
    """Threads of this process in state R (running or runnable) now, from /proc/self/task/*/stat."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        n += stat[stat.rindex(")") + 2] == "R"  # the state follows the "(comm)" field
    return n


_others_before = 0  # other runnable tasks the previous fair_threads() call found


def fair_threads(samples: int = 5) -> int:
    """Threads worth using now: the cores of this process not already taken by other runnable tasks (>= 1).

    On a shared machine an OpenMP pool wider than the free cores waits at every barrier for a descheduled
    thread; a 2-core machine under load ran the builder 4x faster on 1 thread than on 2. Linux's
    /proc/loadavg counts the tasks runnable right now; this process's own (the reader, and OpenMP workers
    still spinning after the last parallel op) are not "other" load. A core counts as taken only if every
    one of a few reads finds it taken, in this call and in the previous one: a steady competitor is
    runnable in all of them, while a read that catches a passing task (or one of our own workers changing
    state between the two files) once cost a quiet machine a batch at half speed about once a run."""
    global _others_before
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        reads = []
        for _ in range(samples):  # our own threads counted before and after: one may change state between
            before = _own_running()
            total = int(open("/proc/loadavg").read().split()[3].split("/")[0])
            reads.append(total - max(1, before, _own_running()))
    except (OSError, ValueError, IndexError):
        return torch.get_num_threads()
    others, _others_before = min(min(reads), _others_before), min(reads)
    return max(1, min(torch.get_num_threads(), cores - others))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with n intra-op threads (None: fair_threads()), then restore the caller's setting."""
    old = torch.get_num_threads()
    n = fair_threads() if n is None else int(n)
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != old:
            torch.set_num_threads(old)
