"""Peak memory of a streaming build is flat in tokens streamed (it grows with regions, not tokens).

Streams synthetic clustered unit rows (d = 640, the width of Gemma 3 270M; 2,000 cluster centres, so the region
count saturates) through ep.build_dictionary in batches of 4,096 and records the process's resident memory after
10k and after 1M streamed tokens. Writes benchmarks/results/memory.{json,md}.

    python benchmarks/bench_memory.py [--tokens 1000000]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import provenance_line, run_record  # noqa: E402

import ep  # noqa: E402
from ep.method.calibration import Calibration  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc), falling back to the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * 4096 / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    d, rng = 640, np.random.default_rng(0)
    centres = rng.normal(size=(2000, d)).astype(np.float32)
    cal = Calibration(centre=torch.zeros(d), threshold=0.5, percentile=1.0, n_tokens=0)
    marks, seen = {}, []

    def stream():
        for b in range(0, args.tokens, args.batch):
            n = min(args.batch, args.tokens - b)
            acts = centres[rng.integers(0, len(centres), n)] + 0.02 * rng.normal(size=(n, d)).astype(np.float32)
            i = torch.arange(b, b + n)
            yield ep.ActivationBatch(torch.from_numpy(acts), i // 128, i % 128, i % 1000)

    def on_batch(tokens: int, regions: int) -> None:
        seen.append((tokens, regions, rss_mb()))

    start = time.perf_counter()
    dictionary = ep.build_dictionary(stream(), cal, progress=False, on_batch=on_batch)
    elapsed = time.perf_counter() - start
    for target in (10_000, args.tokens):
        tokens, regions, rss = next(row for row in seen if row[0] >= target)
        marks[str(target)] = {"tokens": tokens, "regions": regions, "rss_mb": round(rss, 1)}
    result = {"tokens": args.tokens, "d": d, "regions": len(dictionary), "seconds": round(elapsed, 1),
              "tokens_per_s": round(args.tokens / elapsed), "marks": marks, **run_record()}
    out = Path(__file__).parent / "results"
    (out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Peak memory of a streaming build", "", provenance_line(result), "",
             "| after tokens | regions | RSS (MB) |", "|---|---|---|"]
    lines += [f"| {m['tokens']:,} | {m['regions']:,} | {m['rss_mb']} |" for m in marks.values()]
    lines += ["", f"{args.tokens:,} synthetic tokens (d = {d}, 2,000 clusters) in {elapsed:.1f} s "
              f"({result['tokens_per_s']:,} tokens/s through the builder alone)."]
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
