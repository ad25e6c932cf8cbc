"""
θ from the official calibration code ITSELF against `ep.calibrate`, on the same activations and batches.

    python benchmarks/official_calibration.py            # synthetic documents + Gemma 3 270M layer 9
    python benchmarks/official_calibration.py --no-real  # synthetic only (no model)

The official `ep.discovery.calibration.calibrate` (github.com/jessicarumbelow/exemplar-partitioning) runs unmodified
in its own virtual environment (see bench_official.py for the set-up) in a worker process. Both sides get the same
activation batches: whole documents in stream order, `docs_per_batch` per batch, BOS excluded (the paper's CLI:
128 documents of up to 128 tokens; its API: 16). Ours also runs the shuffled-rows control. Writes
results/calibration.{json,md} and tests/data/official_calibration.json, the official θ on the synthetic documents
that tests/test_calibration.py regenerates and checks `ep.calibrate` against.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from bench_official import OFFICIAL_IMPORT  # noqa: E402
from calibration_data import synthetic_documents  # noqa: E402  (shared with the unit test)
from provenance import provenance_line, run_record  # noqa: E402

import ep  # noqa: E402
from ep.method.calibration import calibrate, document_batches  # noqa: E402

WORKER = OFFICIAL_IMPORT + r'''
calibrate = importlib.import_module("ep.discovery.calibration").calibrate
for line in sys.stdin:
    job = json.loads(line)
    x = np.load(job["data"])
    batches = [x[a:b] for a, b in job["bounds"]]
    cal = calibrate(iter(batches), n_tokens=len(x), percentile=job["percentile"])
    print(json.dumps({"threshold": cal.threshold, "centre": cal.center.tolist()}), flush=True)
'''


def official(worker, path: Path, batches: list[torch.Tensor], percentile: float) -> dict:
    """θ and centre from the official code on the activations saved at ``path``, cut into ``batches``."""
    bounds = [(int(b[0]), int(b[-1]) + 1) for b in batches]  # document batches are contiguous row ranges
    worker.stdin.write(json.dumps({"data": str(path), "bounds": bounds, "percentile": percentile}) + "\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def gemma_documents(n_docs: int, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    model, _ = ep.load_model("gemma-3-270m")
    batch = ep.token_activations(model, ep.data.corpus(max_docs=n_docs), layer=9, context_length=context_length,
                                 progress=False)
    return batch.acts.float().numpy(), batch.doc.numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-src", default="/tmp/official")
    ap.add_argument("--official-python", default="/tmp/official-venv/bin/python")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--real-docs", type=int, default=300)
    args = ap.parse_args()
    worker = subprocess.Popen([args.official_python, "-c", WORKER, args.official_src], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    tmp = Path(tempfile.mkdtemp())
    rows, fixture = [], []

    cases = [(f"synthetic {case}", *synthetic_documents(case)) for case in ("small", "large")]
    if not args.no_real:
        cases.append((f"Gemma 3 270M L9, {args.real_docs} Wikipedia docs, context 128",
                      *gemma_documents(args.real_docs, 128)))
    for name, acts, doc in cases:
        path = tmp / "acts.npy"
        np.save(path, acts.astype(np.float32))
        shuffled = {p: calibrate(torch.as_tensor(acts), p, protocol="rows").threshold for p in (1.0, 10.0)}
        for docs_per_batch in (16, 128):
            batches = document_batches(torch.as_tensor(doc), docs_per_batch)
            for p in (1.0, 10.0):
                start = time.perf_counter()
                theirs = official(worker, path, batches, p)
                official_s = time.perf_counter() - start
                start = time.perf_counter()
                ours = calibrate(torch.as_tensor(acts), p, doc=doc, docs_per_batch=docs_per_batch)
                ours_s = time.perf_counter() - start
                row = {"data": name, "rows": len(acts), "docs": int(len(np.unique(doc))),
                       "docs_per_batch": docs_per_batch, "batches": len(batches),
                       "largest_batch": max(len(b) for b in batches), "percentile": p,
                       "official_theta": theirs["threshold"], "ours_theta": ours.threshold,
                       "abs_diff": abs(theirs["threshold"] - ours.threshold),
                       "centre_max_abs_diff": float(np.abs(np.array(theirs["centre"]) - ours.centre.numpy()).max()),
                       "rows_protocol_theta": shuffled[p], "official_s": official_s, "ours_s": ours_s}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if name.startswith("synthetic"):
                    fixture.append({"case": name, "docs_per_batch": docs_per_batch, "percentile": p,
                                    "official_theta": theirs["threshold"],
                                    "data_sha256": hashlib.sha256(acts.tobytes()).hexdigest()[:16]})
    worker.stdin.close()

    out = ROOT / "benchmarks" / "results"
    info = {**run_record(), "rows": rows}
    (out / "calibration.json").write_text(json.dumps(info, indent=1))
    lines = ["# θ: the official calibration code vs `ep.calibrate` (same activations, same document batches)", "",
             f"{provenance_line(info)} The official code runs unmodified in its own venv (CPU: scipy "
             "`pdist`, float64). `rows protocol` is ours with 1,024 shuffled rows per batch (the control).", "",
             "| data | rows | docs/batch | batches | largest batch | p | official θ | ours θ | abs diff | "
             "rows protocol θ | official (s) | ours (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['rows']} | {r['docs_per_batch']} | {r['batches']} | {r['largest_batch']} | "
                     f"{r['percentile']:g} | {r['official_theta']:.6f} | {r['ours_theta']:.6f} | {r['abs_diff']:.1e} | "
                     f"{r['rows_protocol_theta']:.6f} | {r['official_s']:.1f} | {r['ours_s']:.1f} |")
    (out / "calibration.md").write_text("\n".join(lines) + "\n")
    (ROOT / "tests" / "data").mkdir(exist_ok=True)
    (ROOT / "tests" / "data" / "official_calibration.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
