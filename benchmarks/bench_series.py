"""
How long the notebook series takes, per notebook, as a learner runs it: with the defaults, the solutions filled in.

    python benchmarks/bench_series.py --dtype float32            # the models in fp32 (most learners' CPUs)
    python benchmarks/bench_series.py --dtype bfloat16           # in bf16 (a CPU or GPU with native bf16)
    python benchmarks/bench_series.py --dtype float32 --no-bf16  # and as on a CPU without bf16 instructions
    python benchmarks/bench_series.py --only 02 04               # some notebooks

Each notebook runs in a fresh papermill kernel (so each pays its own imports and model load, as a learner's does),
one after another, with `EP_DTYPE` set. `--no-bf16` also sets `ONEDNN_MAX_CPU_ISA=AVX2` and
`ATEN_CPU_CAPABILITY=avx2` (oneDNN and ATen then use no AVX-512 or AMX kernels) and `EP_NATIVE_BF16=0` (so `ep`
decides as on such a CPU); it first measures a bf16 and an fp32 matrix product under those settings, so the
record shows whether the emulation held (bf16 several times slower than fp32). Model conversions are cached
(`EP_CACHE_DIR`): run the series once before timing it.
Results: results/series_<dtype>[_nobf16].{json,md}, with the commit, the command line, the machine and the load.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provenance import command, commit

HERE = Path(__file__).parent
REPO = HERE.parent
NO_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "EP_NATIVE_BF16": "0"}

GEMM_RATES = r'''
import json, time, torch
a, b = torch.randn(4096, 2304), torch.randn(8192, 2304)
rates = {}
for dtype in (torch.float32, torch.bfloat16):
    x, y = a.to(dtype), b.to(dtype)
    torch.mm(x, y.T)
    start = time.perf_counter()
    for _ in range(3):
        torch.mm(x, y.T)
    rates[str(dtype).removeprefix("torch.")] = 3 * 2 * 4096 * 8192 * 2304 / (time.perf_counter() - start) / 1e9
print(json.dumps(rates))
'''


def gemm_rates(env: dict) -> dict:
    """GFLOP/s of a 4096 x 2304 @ 2304 x 8192 product in fp32 and bf16, in a fresh process with env."""
    out = subprocess.run([sys.executable, "-c", GEMM_RATES], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], required=True)
    parser.add_argument("--no-bf16", action="store_true", help="emulate a CPU without bf16 instructions")
    parser.add_argument("--only", nargs="*", help="notebook numbers, e.g. 02 04")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "series")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from ep.show.notebook import machine

    env = {**os.environ, "EP_DTYPE": args.dtype, **(NO_BF16 if args.no_bf16 else {})}
    notebooks = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if not args.only or p.name[:2] in args.only)
    record = {"command": command(), "commit": commit(),
              "machine": machine(), "env": {k: env[k] for k in ("EP_DTYPE", *NO_BF16) if k in env},
              "gemm_gflops": gemm_rates(env), "notebooks": {}}
    print(record["gemm_gflops"])
    args.out.mkdir(parents=True, exist_ok=True)
    for nb in notebooks:
        params = ["-p", "results_dir", str(args.out / "results"), "-p", "fill_solutions", "True"]
        start, load = time.perf_counter(), os.getloadavg()[0]
        run = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(nb.parent), str(nb),
                              str(args.out / nb.name), *params, "--no-progress-bar"],
                             env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        record["notebooks"][nb.stem] = {"seconds": round(seconds, 1), "ok": run.returncode == 0,
                                        "load_before": round(load, 2)}
        print(f"{nb.stem}: {seconds:.0f} s{'' if run.returncode == 0 else ' FAILED'}", flush=True)
        if run.returncode:
            record["notebooks"][nb.stem]["error"] = run.stderr[-2000:]
    total = sum(v["seconds"] for v in record["notebooks"].values())
    record["total_minutes"] = round(total / 60, 2)
    name = f"series_{args.dtype}{'_nobf16' if args.no_bf16 else ''}{'_partial' if args.only else ''}"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v['seconds']:.0f} | {'' if v['ok'] else 'failed'} |"
                     for k, v in record["notebooks"].items())
    m = record["machine"]
    (HERE / "results" / f"{name}.md").write_text(
        f"# The series, {args.dtype}{', emulating a CPU without bf16' if args.no_bf16 else ''}\n\n"
        f"`{record['command']}` at commit {record['commit']} on {m['cpu']} ({m['threads']} threads, torch "
        f"{m['torch']}). GEMM 4096 x 2304 x 8192: fp32 {record['gemm_gflops']['float32']:.0f} GFLOP/s, bf16 "
        f"{record['gemm_gflops']['bfloat16']:.0f}.\n\n| notebook | seconds | |\n|---|---|---|\n{rows}\n"
        f"| **series** | **{total:.0f}** ({total / 60:.1f} min) | |\n")
    print(f"series: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
