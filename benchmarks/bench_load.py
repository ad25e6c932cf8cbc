"""
How the builder and the official code slow down under different competing loads (few regions, where margins are thin).

    python benchmarks/bench_load.py                 # Gemma 3 270M L9 and synthetic 20k x 2304; ~10 min on 2 cores
    python benchmarks/bench_load.py --loads 0x0,1x2 --reps 3

A load "PxT" is P competing processes, each running T threads of fp32 GEMMs (0x0: none). Under each, the same
stream (batches of 4096, the few-regions threshold of bench_official.py) is built by: ours as shipped
(`fair_threads()` picks the threads per batch), ours forced to 1 and to 2 threads, the official
`Dictionary.add_batch` (its own venv, a worker process as in bench_official.py) and the official with its
OpenBLAS held to one thread. Medians of `--reps` passes, the variants alternating. "Slowdown" divides a
variant's median under the load by its median on the quiet machine: the issue's measure of degrading
"no worse than the official"; the 1-thread variants give the same measure thread for thread, without the gain
each code draws from a second core when it is free. Results: results/load.{json,md}.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_official import (
    PAUSE,
    THREADS,
    clustered,
    competitor,
    gemma_rows,
    loads,
    official,
    ours,
    start_worker,
    theta_for,
)
from provenance import command, commit

from ep.method.calibration import spherical_centre
from ep.show.notebook import machine

HERE = Path(__file__).parent
VARIANTS = ("ours", "ours 1 thread", "ours 2 threads", "official", "official 1 thread")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", default="0x0,1x1,1x2,2x2,3x1")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--official-src", default="/tmp/official")
    ap.add_argument("--official-python", default="/tmp/official-venv/bin/python")
    args = ap.parse_args()
    load_kinds = [tuple(map(int, k.split("x"))) for k in args.loads.split(",")]
    if (0, 0) not in load_kinds:
        load_kinds.insert(0, (0, 0))  # the slowdowns need the quiet medians

    tmp = Path(tempfile.mkdtemp())
    shapes = []
    data = (("Gemma 3 270M L9", gemma_rows(160)), ("synthetic 20k x 2304", clustered(20_000, 2304, 800, seed=1)))
    for label, x in data:
        centre = spherical_centre(torch.from_numpy(x))
        np.save(tmp / f"{len(shapes)}_x.npy", x)
        np.save(tmp / f"{len(shapes)}_c.npy", centre.numpy())
        shapes.append((label, x, centre, theta_for(x, centre, 0.05)))
    serial = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    workers = {v: start_worker(args.official_python, args.official_src, extra)
               for v, extra in (("official", {}), ("official 1 thread", serial))}
    rows, start = [], {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for procs, threads in load_kinds:
        competitors = [competitor(threads) for _ in range(procs)]
        time.sleep(2 if procs else 0)
        try:
            for i, (label, x, centre, theta) in enumerate(shapes):
                job = {"data": str(tmp / f"{i}_x.npy"), "centre": str(tmp / f"{i}_c.npy"), "theta": theta,
                       "batch": 4096}
                times = {v: [] for v in VARIANTS}
                THREADS.clear()  # ours() notes what fair_threads() picks as each of its runs "ours" starts
                for _ in range(args.reps):
                    for v in VARIANTS:
                        time.sleep(PAUSE)
                        if v.startswith("official"):
                            times[v].append(sum(official(workers[v], job)["times"]))
                        else:
                            threads_now = {"ours": None, "ours 1 thread": 1}.get(v, 2)
                            times[v].append(sum(ours(x, centre, theta, 4096, threads_now)[0]))
                row = {"load": f"{procs}x{threads}", "data": label, "theta": theta, "loads": loads(),
                       "fair_threads": list(THREADS), "median_s": {v: float(np.median(t)) for v, t in times.items()},
                       "times_s": times}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("load", "data", "median_s", "fair_threads")}), flush=True)
        finally:
            for p in competitors:
                p.kill()
                p.wait()
    for w in workers.values():
        w.stdin.close()
        w.wait()
    quiet = {r["data"]: r["median_s"] for r in rows if r["load"] == "0x0"}
    for r in rows:
        r["slowdown"] = {v: r["median_s"][v] / quiet[r["data"]][v] for v in VARIANTS}
    res = {"start": start, "end": {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
           "machine": machine(), "commit": commit(), "command": command(), "reps": args.reps, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "load.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    lines = ["# Few regions under competing loads: ours against the official `Dictionary.add_batch`", "",
             f"`{res['command']}` at commit {res['commit']}. {m['cpu']}, {os.cpu_count()} cores, torch "
             f"{m['torch']}; started {start['time']} (load {start['loads']}), ended {res['end']['time']}. "
             f"Medians of {args.reps} passes over the whole stream (batches of 4096); load PxT = P competing "
             "processes of T fp32-GEMM threads. Slowdown = median under the load / median with none.", "",
             "| data | load | ours (ms) | ours 1 / 2 threads (ms) | official (ms) | official 1 thread (ms) "
             "| x official | slowdown ours / official | slowdown at 1 thread ours / official | fair_threads() picked |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, s = {v: t * 1e3 for v, t in r["median_s"].items()}, r["slowdown"]
        lines.append(f"| {r['data']} | {r['load']} | {ms['ours']:.0f} | {ms['ours 1 thread']:.0f} / "
                     f"{ms['ours 2 threads']:.0f} | {ms['official']:.0f} | {ms['official 1 thread']:.0f} | "
                     f"{ms['official'] / ms['ours']:.1f} | {s['ours']:.2f} / {s['official']:.2f} | "
                     f"{s['ours 1 thread']:.2f} / {s['official 1 thread']:.2f} | "
                     f"{', '.join(map(str, r['fair_threads']))} |")
    (HERE / "results" / "load.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
