"""
The builder against the official implementation ITSELF, interleaved in one run, with and without a competing load.

    python benchmarks/bench_official.py              # synthetic shapes + Gemma 3 270M layer 9, quiet and loaded
    python benchmarks/bench_official.py --quick      # one small shape, one pass
    python benchmarks/bench_official.py --no-bf16    # as on a CPU without native bf16 (results/official_nobf16.*)

The official code (github.com/jessicarumbelow/exemplar-partitioning, `ep.discovery.dictionary.Dictionary`) runs
unmodified in its own virtual environment, in a worker process this script talks to over a pipe:

    git -C <mirror> archive HEAD ep | tar -x -C /tmp/official
    python -m venv /tmp/official-venv && /tmp/official-venv/bin/pip install numpy scipy

Both sides get the same raw rows, the same centre and the same threshold, stream them in the same batches, and
build a full dictionary (ours: `DictionaryBuilder.add_arrays`: counts, sums, nearest/farthest samples; the
official: `Dictionary.add_batch`: counts, running means, prompt heaps, reservoir samples). Timed: the first
batch ("first call", in a fresh builder) and the whole stream, each the best of `--reps`, the two sides alternating.
The exemplar sets (row indices) are compared. "Loaded" repeats everything while a competing process keeps
two threads busy with fp32 matrix products (a notebook running beside the build).
Results: results/official.{json,md} (official_quick.* for --quick), with the commit, the command line, the machine,
`uptime` loads and this process's bf16 and fp32 GEMM rates (the builder screens in bf16 where it is native, else fp32).

--no-bf16 restarts the script with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
(oneDNN, ATen and MKL then use no AVX-512 and no bf16 instructions, as on most laptops and Colab; a bf16 GEMM then
runs on a reference path, far slower than on a real AVX2 CPU, which the builder no longer uses) and EP_NATIVE_BF16=0
(the builder's hardware check reads /proc/cpuinfo, which still lists avx512_bf16); the official worker gets
OPENBLAS_CORETYPE=Haswell, so numpy's OpenBLAS runs its AVX2 kernels too.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from provenance import command, commit

import ep
from ep.method.builder import DictionaryBuilder
from ep.method.calibration import Calibration, spherical_centre, to_directions
from ep.method.device import fair_threads, screen_dtype
from ep.show.notebook import machine

HERE = Path(__file__).parent
THREADS: list[int] = []  # fair_threads() at the start of each of our runs
PAUSE = 0.5  # seconds between runs: lets the idle threads of the side that just ran go to sleep

# Imports the official package from the source folder given as argv[1] without running its heavy __init__s
# (they pull in models and plotting); shared with official_calibration.py.
OFFICIAL_IMPORT = r'''
import importlib, json, sys, time, types
import numpy as np
root = sys.argv[1]
for name, path in (("ep", root + "/ep"), ("ep.discovery", root + "/ep/discovery")):
    m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m
'''

WORKER = OFFICIAL_IMPORT + r'''
Dictionary = importlib.import_module("ep.discovery.dictionary").Dictionary
for line in sys.stdin:
    job = json.loads(line)
    x, centre = np.load(job["data"], mmap_mode="r"), np.load(job["centre"])
    d, times = Dictionary(centre, job["theta"]), []
    for s in range(0, x.shape[0], job["batch"]):
        b = np.ascontiguousarray(x[s:s + job["batch"]])
        t = time.perf_counter()
        d.add_batch(b, global_index_start=s)
        times.append(time.perf_counter() - t)
    ex = [p.constituent_sample_indices[0] for p in d.partitions]
    print(json.dumps({"times": times, "exemplars": ex}), flush=True)
'''

LOAD = r'''
import torch
torch.set_num_threads({threads})
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
while True:
    a @ b
'''


def competitor(threads: int) -> subprocess.Popen:
    """A competing process running fp32 GEMMs on `threads` threads until killed."""
    return subprocess.Popen([sys.executable, "-c", LOAD.format(threads=threads)])


def start_worker(python: str, src: str, env: dict | None = None) -> subprocess.Popen:
    """The official code in its own interpreter, answering `official()` jobs (env: extra variables)."""
    return subprocess.Popen([python, "-c", WORKER, src], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


NO_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "EP_NATIVE_BF16": "0"}
OFFICIAL_NO_AVX512 = {"OPENBLAS_CORETYPE": "Haswell"}  # numpy's OpenBLAS: AVX2 kernels, as on such a CPU


def gemm_rates(m: int = 1024, k: int = 2304, n: int = 2048) -> dict:
    """GFLOP/s of an [m, k] @ [k, n] product in fp32 and bf16 on this process's threads (best of 2; small: an
    emulated bf16 GEMM may run at a few GFLOP/s)."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            x @ y
            best = min(best, time.perf_counter() - t)
        out[name] = round(2 * m * k * n / best / 1e9, 1)
    return out


def run_info() -> dict:
    """The commit, the command line and the environment that decides the screen: what a result file must say."""
    return {"commit": commit(), "command": command(),
            "env": {k: os.environ[k] for k in NO_BF16 if k in os.environ},
            "screen": str(screen_dtype(torch.device("cpu"))).removeprefix("torch."),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gemm_gflops": gemm_rates()}


def loads() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def clustered(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Raw rows: k random directions with per-cluster noise (log-uniform scale), plus an offset the centre removes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    sigma = torch.empty(k).uniform_(np.log(0.3), np.log(3.0), generator=g).exp()
    label = torch.randint(0, k, (n,), generator=g)
    x = centres[label] + sigma[label, None] * torch.randn(n, d, generator=g) / d**0.5
    return (x * 5 + torch.randn(d, generator=g)).numpy().astype(np.float32)  # [n, d]


def gemma_rows(n_docs: int) -> np.ndarray:
    cache = Path(tempfile.gettempdir()) / f"bench_official_gemma_l9_{n_docs}.npy"
    if not cache.exists():
        model, _ = ep.load_model("gemma-3-270m")
        acts = ep.token_activations(model, ep.data.corpus(max_docs=n_docs), layer=9, progress=False).acts
        np.save(cache, acts.float().numpy())
    return np.load(cache)


def theta_for(x: np.ndarray, centre: torch.Tensor, regions_frac: float) -> float:
    """A threshold leaving roughly regions_frac of the rows as exemplars (nearest-neighbour cosines, first 4096)."""
    u = to_directions(torch.from_numpy(x[:4096]), centre)
    s = (u @ u.T).fill_diagonal_(-1).amax(dim=1)  # nearest other row
    return float(np.clip(1 - torch.quantile(s, regions_frac).item(), 1e-3, 1.99))


def ours(x: np.ndarray, centre: torch.Tensor, theta: float, batch: int, threads: int | None = None):
    """Our builder over the stream -> (seconds per batch, exemplar row indices); threads None: fair_threads()."""
    cal = Calibration(centre=centre, threshold=theta, percentile=float("nan"), n_tokens=0)
    b, times = DictionaryBuilder(cal, chunk_size=batch, threads=threads), []
    if threads is None:
        THREADS.append(fair_threads())  # what the builder is about to pick for its first batch
    n = x.shape[0]
    doc, pos = torch.arange(n) // 128, torch.arange(n) % 128
    for s in range(0, n, batch):
        t = time.perf_counter()
        b.add_arrays(torch.from_numpy(x[s:s + batch]), doc[s:s + batch], pos[s:s + batch], pos[s:s + batch])
        times.append(time.perf_counter() - t)
    return times, b.snapshot().exemplar_index.tolist()


def official(worker: subprocess.Popen, job: dict) -> dict:
    """One job for the official worker (data, centre, theta, batch) -> {"times": [s per batch], "exemplars"}."""
    worker.stdin.write(json.dumps(job) + "\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def explain(x: np.ndarray, centre: torch.Tensor, theta: float, ours_ex: list, official_ex: list) -> dict:
    """Where two exemplar sets part: the first row in one and not the other, and its exact (float64) cosine
    to its most similar earlier exemplar (ours) against tau = 1 - theta: a near-tie that fp32 rounds across."""
    first = min(set(ours_ex) ^ set(official_ex))
    u = to_directions(torch.from_numpy(x[: first + 1]), centre).double()  # [first + 1, d]
    earlier = [i for i in ours_ex if i < first]
    cos = (u[earlier] @ u[first]).max().item() if earlier else float("-inf")
    return {"row": first, "exemplar_in": "ours" if first in ours_ex else "official", "max_cos": cos,
            "tau": 1.0 - theta, "gap": cos - (1.0 - theta)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--official-src", default="/tmp/official")
    ap.add_argument("--official-python", default="/tmp/official-venv/bin/python")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the synthetic row counts (busy machine)")
    ap.add_argument("--no-bf16", action="store_true", help="run as on a CPU without native bf16 (see the docstring)")
    args = ap.parse_args()
    if args.no_bf16 and any(os.environ.get(k) != v for k, v in NO_BF16.items()):  # torch reads them at start-up
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **NO_BF16})
    info = run_info()
    print(json.dumps(info), flush=True)

    shapes = [("synthetic 10k x 640", clustered(10_000, 640, 400))] if args.quick else [
        (f"synthetic {int(50 * args.scale)}k x 640", clustered(int(50_000 * args.scale), 640, 2000)),
        (f"synthetic {int(20 * args.scale)}k x 2304", clustered(int(20_000 * args.scale), 2304, 800, seed=1)),
    ]
    if not args.no_real and not args.quick:
        shapes.append(("Gemma 3 270M L9, Wikipedia", gemma_rows(160)))
    regimes = {"few": 0.05, "mid": 0.4, "all": 1.0}

    tmp = Path(tempfile.mkdtemp())
    worker = start_worker(args.official_python, args.official_src, OFFICIAL_NO_AVX512 if args.no_bf16 else None)
    rows, start = [], {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for cond in ["quiet"] + ([] if args.no_load else ["loaded"]):
        load = competitor(2) if cond == "loaded" else None
        time.sleep(2 if load else 0)
        try:
            for label, x in shapes:
                centre = spherical_centre(torch.from_numpy(x))  # [d], the same for both sides
                np.save(tmp / "x.npy", x)
                np.save(tmp / "c.npy", centre.numpy())
                for regime, frac in regimes.items():
                    theta = theta_for(x, centre, frac) if frac < 1 else 1e-3
                    best = {"ours": None, "official": None}
                    first = {"ours": float("inf"), "official": float("inf")}  # the fastest first call of any rep
                    for _ in range(args.reps):  # alternate: ours, official, ours, official
                        time.sleep(PAUSE)  # the other side's idle BLAS / OpenMP threads spin a while after work
                        t_o, ex_o = ours(x, centre, theta, args.batch)
                        time.sleep(PAUSE)
                        off = official(worker, {"data": str(tmp / "x.npy"), "centre": str(tmp / "c.npy"),
                                                "theta": theta, "batch": args.batch})
                        for side, t in (("ours", t_o), ("official", off["times"])):
                            if best[side] is None or sum(t) < sum(best[side]):
                                best[side] = t
                            first[side] = min(first[side], t[0])
                    row = {"condition": cond, "data": label, "rows": x.shape[0], "d": x.shape[1], "regime": regime,
                           "theta": theta, "regions": len(ex_o), "identical": ex_o == off["exemplars"],
                           "official_regions": len(off["exemplars"]),
                           "ours_s": sum(best["ours"]), "official_s": sum(best["official"]),
                           "ours_first_s": first["ours"], "official_first_s": first["official"],
                           "loads": loads(), "ours_threads_now": THREADS[-1]}
                    if not row["identical"]:
                        row["mismatch"] = explain(x, centre, theta, ex_o, off["exemplars"])
                    row["speedup"] = row["official_s"] / row["ours_s"]
                    row["first_speedup"] = row["official_first_s"] / row["ours_first_s"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if load is not None:
                load.kill()
                load.wait()
    worker.stdin.close()
    worker.wait()
    res = {"start": start, "end": {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, **info,
           "machine": machine(), "torch_threads": torch.get_num_threads(), "batch": args.batch, "rows": rows}
    name = ("official_quick" if args.quick else "official") + ("_nobf16" if args.no_bf16 else "")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    lines = [f"# The builder vs the official `Dictionary.add_batch` (batch {args.batch}, best of {args.reps})", "",
             f"`{info['command']}` at commit {info['commit']}"
             + (f" with {' '.join(f'{k}={v}' for k, v in info['env'].items())}" if info["env"] else "") + ". "
             f"{m['cpu']}, torch {m['torch']}, ATen CPU capability {info['cpu_capability']}; GEMM rates in this "
             f"process: fp32 {info['gemm_gflops']['fp32']} GFLOP/s, bf16 {info['gemm_gflops']['bf16']} GFLOP/s; "
             f"the builder screens in **{info['screen']}**. "
             f"{res['torch_threads']} torch threads at most (ours takes "
             "`fair_threads()` per batch: the cores other runnable tasks leave free; `threads` below is its value "
             "when our last run of the row started; the official's OpenBLAS always runs 2); started "
             f"{start['time']} (load {start['loads']}), ended {res['end']['time']} (load {res['end']['loads']}). "
             "`loaded`: a competing process runs two threads of fp32 GEMMs throughout.", "",
             "| condition | data | regime | theta | regions | identical | ours (s) | official (s) | x official "
             "| first call ours / official (s) | x first | load | threads |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['data']} | {r['regime']} | {r['theta']:.3f} | {r['regions']} | "
                     f"{'yes' if r['identical'] else 'NO: ' + str(r['official_regions'])} | {r['ours_s']:.2f} | "
                     f"{r['official_s']:.2f} | {r['speedup']:.1f} | {r['ours_first_s']:.3f} / "
                     f"{r['official_first_s']:.3f} | {r['first_speedup']:.1f} | {r['loads']} | "
                     f"{r['ours_threads_now']} |")
    for r in rows:
        if "mismatch" in r:
            mm = r["mismatch"]
            lines.append(f"\n{r['condition']}, {r['data']}, {r['regime']}: the sets first differ at row {mm['row']} "
                         f"(an exemplar in {mm['exemplar_in']} only). Its exact cosine to its most similar earlier "
                         f"exemplar is {mm['max_cos']:.12f}, tau = 1 - theta = {mm['tau']:.12f}: {abs(mm['gap']):.1e} "
                         f"{'below' if mm['gap'] < 0 else 'above'} the threshold; an fp32 dot product of "
                         f"d = {r['d']} terms may be off by up to {r['d'] * 2.0**-24:.1e}, and both sides differ in "
                         "how they centre and normalise in fp32. Ours decides on the exact value (float64 of the "
                         "fp32 directions, as `leader_cluster_reference`); the official decides on fp32 scores.")
    (HERE / "results" / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
