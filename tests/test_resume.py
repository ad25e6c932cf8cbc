"""Long builds survive: a build killed at any point (SIGKILL) resumes from its checkpoint to a byte-identical file.

The stream here is synthetic and deterministic (seeded clusters, documents of 40 tokens), with a short sleep per
batch standing in for the model's extraction time, so the kill lands mid-build.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ep
from ep.method.builder import DictionaryBuilder
from ep.method.calibration import Calibration

SCRIPT = r'''
import sys, time
import numpy as np, torch
sys.path.insert(0, {repo!r})
import ep
from ep.method.calibration import Calibration

def stream(n_batches=60, rows=400, d=48, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, d))
    for b in range(n_batches):
        acts = centres[rng.integers(0, 300, rows)] + 0.35 * rng.normal(size=(rows, d))
        i = np.arange(b * rows, (b + 1) * rows)
        yield ep.ActivationBatch(torch.tensor(acts, dtype=torch.float32), torch.tensor(i // 40), torch.tensor(i % 40),
                                 torch.tensor(i % 97))
        time.sleep({pause})

cal = Calibration(centre=torch.zeros(48), threshold=0.35, percentile=1.0, n_tokens=0)
d = ep.build_dictionary(stream(), cal, n_samples=4, progress=False, chunk_size=512,
                        checkpoint={checkpoint!r}, checkpoint_every=1000)
d.save({out!r})
'''


def _run(tmp: Path, name: str, pause: float, kill_after: float | None = None) -> Path:
    out, checkpoint = tmp / f"{name}.safetensors", tmp / f"{name}.ckpt"
    code = SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]), pause=pause, checkpoint=str(checkpoint),
                         out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    if kill_after is not None:  # from the first checkpoint on (start-up time varies with the machine's load)
        start = time.monotonic()
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() - start < 120:
            time.sleep(0.05)
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        return checkpoint
    assert proc.wait(timeout=300) == 0
    return out


def test_killed_builds_resume_to_identical_bytes(tmp_path):
    clean = _run(tmp_path, "clean", pause=0.0).read_bytes()
    rng = random.Random(0)
    for trial in range(3):
        name = f"killed{trial}"
        for _ in range(2):  # killed twice at random points, then left to finish
            _run(tmp_path, name, pause=0.04, kill_after=rng.uniform(0.0, 2.0))
        assert (tmp_path / f"{name}.ckpt").exists(), "the kill came before the first checkpoint: raise kill_after"
        assert _run(tmp_path, name, pause=0.0).read_bytes() == clean, f"trial {trial}: resumed build differs"


def _cal(d=16, theta=0.3):
    return Calibration(centre=torch.zeros(d), threshold=theta, percentile=1.0, n_tokens=0)


def _batches(n=6, rows=200, d=16, seed=1):
    rng = np.random.default_rng(seed)
    for b in range(n):
        i = torch.arange(b * rows, (b + 1) * rows)
        yield ep.ActivationBatch(torch.tensor(rng.normal(size=(rows, d)), dtype=torch.float32), i // 20, i % 20, i % 7)


def test_checkpoint_of_another_calibration_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    ep.build_dictionary(_batches(), _cal(), progress=False, checkpoint=path, checkpoint_every=100)
    with pytest.raises(ValueError, match="another calibration"):
        ep.build_dictionary(_batches(), _cal(theta=0.5), progress=False, checkpoint=path)


def test_corrupted_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "c.ckpt"
    ep.build_dictionary(_batches(), _cal(), progress=False, checkpoint=path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="delete it"):
        ep.build_dictionary(_batches(), _cal(), progress=False, checkpoint=path)


def test_restored_builder_equals_the_original(tmp_path):
    a = DictionaryBuilder(_cal(), n_samples=3)
    batches = list(_batches())
    for b in batches[:3]:
        a.add(b)
    a.save_checkpoint(tmp_path / "s.ckpt")
    b = DictionaryBuilder(_cal(), n_samples=3)
    b.load_checkpoint(tmp_path / "s.ckpt")
    for x in batches[3:]:
        a.add(x)
        b.add(x)
    da, db = a.snapshot(), b.snapshot()
    da.save(tmp_path / "a.safetensors")
    db.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_saturation_stop_is_off_by_default_and_stops_when_asked():
    # the same 100 rows again and again: after the first batch nothing is new
    rows = torch.tensor(np.random.default_rng(2).normal(size=(100, 16)), dtype=torch.float32)
    i = torch.arange(100)
    again = [ep.ActivationBatch(rows, i // 20 + 10 * b, i % 20, i % 7) for b in range(8)]
    full = ep.build_dictionary(again, _cal(), progress=False)
    assert full.meta["tokens_streamed"] == 800 and "saturated_after_tokens" not in full.meta
    stopped = ep.build_dictionary(again, _cal(), progress=False, saturation_window=2)
    assert stopped.meta["saturated_after_tokens"] == 300 and len(stopped) == len(full)
