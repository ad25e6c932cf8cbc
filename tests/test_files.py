"""ep.method.files: a file or a folder is replaced whole or not at all; nothing is left behind."""

import os

import pytest
import torch

from ep.method.files import (
    atomic_write_bytes,
    atomic_write_text,
    canonical_json,
    key_hash,
    load_arrays,
    save_arrays,
    sha256_file,
    staged_dir,
)


def test_canonical_json_and_key_hash_ignore_key_order():
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
    assert key_hash({"a": 1, "b": 2}) == key_hash({"b": 2, "a": 1}) != key_hash({"a": 1, "b": 3})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["f.txt"]
    import hashlib
    assert sha256_file(path) == hashlib.sha256(b"new").hexdigest()


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_staged_dir_swaps_in_new_folder(tmp_path):
    out = tmp_path / "ckpt"
    with staged_dir(out) as d:
        (d / "a").write_text("1")
    with staged_dir(out) as d:
        (d / "b").write_text("2")
    assert sorted(os.listdir(out)) == ["b"]
    assert os.listdir(tmp_path) == ["ckpt"]  # no staging or trash folder left


def test_staged_dir_failure_keeps_old_folder_and_cleans_staging(tmp_path):
    out = tmp_path / "ckpt"
    with staged_dir(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as d:
            (d / "half").write_text("x")
            raise RuntimeError("crash mid-write")
    assert os.listdir(out) == ["a"] and os.listdir(tmp_path) == ["ckpt"]


def test_staged_dir_failed_swap_restores_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    with staged_dir(out) as d:
        (d / "a").write_text("1")
    real = os.replace

    def fail_on_staging(src, dst):
        if str(src).endswith(".staging"):
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_staging)
    with pytest.raises(OSError):
        with staged_dir(out) as d:
            (d / "b").write_text("2")
    assert os.listdir(out) == ["a"] and os.listdir(tmp_path) == ["ckpt"]


def test_save_load_arrays_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "x.safetensors"
    save_arrays(path, {"v": torch.arange(4.0)}, {"k": 1}, "ep_test")
    arrays, info = load_arrays(path, "ep_test")
    assert torch.equal(arrays["v"], torch.arange(4.0)) and info == {"k": 1}
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_arrays(path, "ep_test")


def test_one_maker_makes_a_cache_entry_once_when_two_processes_want_it(tmp_path):
    """Two processes start at once; each makes the entry unless it exists. The second waits and finds it."""
    import subprocess
    import sys

    script = f"""
import sys, time
from pathlib import Path
from ep.method.files import one_maker
target = Path({str(tmp_path / "entry")!r})
with one_maker(target):
    if not target.exists():
        time.sleep(1.0)  # a slow conversion
        with open(target.parent / "makers", "a") as f:
            f.write(sys.argv[1] + "\\n")
        target.write_text("made")
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)]) for i in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert (tmp_path / "entry").read_text() == "made"
    assert len((tmp_path / "makers").read_text().split()) == 1, "made twice"
