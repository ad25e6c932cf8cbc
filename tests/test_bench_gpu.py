"""benchmarks/bench_gpu.py runs as a dry run on the CPU (tiny model, tiny rows), so it works the day a GPU is there.

The official code is not part of this repository; a stand-in with its interface (numpy leader clustering, exact in
float64) lets the comparison run end to end, and must agree with the builder on every exemplar.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAND_IN = '''
import numpy as np


class Partition:
    def __init__(self, index):
        self.constituent_sample_indices = [index]


class Dictionary:
    def __init__(self, center, threshold):
        self.center, self.tau, self.partitions, self.ex = center, 1.0 - threshold, [], []

    def add_batch(self, x, global_index_start=0):
        u = x.astype(np.float64) - self.center
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        for i, row in enumerate(u.astype(np.float32).astype(np.float64)):
            if not self.ex or max(e @ row for e in self.ex) < self.tau:
                self.ex.append(row)
                self.partitions.append(Partition(global_index_start + i))
'''


def test_dry_run(tmp_path):
    discovery = tmp_path / "ep" / "discovery"
    discovery.mkdir(parents=True)
    (discovery / "dictionary.py").write_text(STAND_IN)
    (discovery / "geometry.py").write_text("def try_torch_gpu():\n    return None, None\n")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--dry-run", "--out", "",
                          "--official-python", sys.executable, "--official-src", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    header = next(r for r in lines if "dry_run" in r)
    assert header["dry_run"] and header["official_device"] == "cpu (numpy)"
    builds = [r for r in lines if "identical" in r]
    assert len(builds) == 2 and all(r["identical"] and r["regions"] > 10 for r in builds)
    assert any("tokens" in r and "bare_tok_s" in r for r in lines)
    assert any("total_h" in r for r in lines)
