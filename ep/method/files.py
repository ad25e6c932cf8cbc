"""Files written whole or not at all, and the hashes that name them: the one home for both.

A calibration, a dictionary, a builder checkpoint, a converted model and a finetuned sibling are all
cached on disk, and a run can die at any moment (a killed kernel, a full disk). So every writer here
leaves either the old complete file (or folder) or the new complete one, never half of either:

- a file: write a temp file in the same folder, fsync it, then ``os.replace`` it over the target
  (one atomic rename on POSIX and Windows);
- a folder: write everything into a staging folder beside the target, then swap it in with two renames
  (old -> trash, staging -> target) and delete the trash afterwards, so no reader ever sees a
  half-deleted folder; on failure the staging folder is removed and the old folder restored.

Two processes that would make the same expensive cache entry at once (two notebooks open side by side, two test
workers, each converting the same model on first use) take turns through ``one_maker``: the second waits, then finds
the first one's result.

Arrays go to safetensors with one JSON entry of metadata and a sha256 over both (``save_arrays``):
the bytes are a pure function of the contents, and loading never runs code from the file (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def cache_dir() -> Path:
    """The one cache folder: ``$EP_CACHE_DIR``, default ``~/.cache/ep-tutorial`` (converted models, calibrations,
    finetuned siblings, published conversions, each in its own subfolder)."""
    return Path(os.environ.get("EP_CACHE_DIR", Path.home() / ".cache" / "ep-tutorial"))


def canonical_json(obj) -> str:
    """Deterministic JSON: sorted keys, no whitespace, strict (no NaN).

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    '{"a":[1.5,"é"],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def key_hash(key: dict) -> str:
    """sha256 hex digest of the canonical JSON of a cache key (so key order does not matter)."""
    return hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (GGUFs and pickles can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: temp file in the same folder, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def one_maker(target) -> Iterator[None]:
    """Hold an exclusive lock named after ``target`` (``.<name>.lock`` beside it) for the block: check whether the
    cache entry exists, and make it if not, inside it. No-op where file locks are not available (not POSIX)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        start = time.monotonic()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to finish making {target} ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
            print(f"... done after {time.monotonic() - start:.0f} s", flush=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def staged_dir(target) -> Iterator[Path]:
    """Write a folder whole or not at all: ``with staged_dir(out) as tmp: <write into tmp>``.

    On a clean exit the staging folder replaces ``target`` (an existing one is moved aside first and
    deleted only once the new one is in place); on an exception ``target`` is left as it was and the
    staging folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".staging"))
    trash = None
    try:
        yield staging
        if target.exists():
            trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, trash / target.name)  # same filesystem: a rename, not a copy
        try:
            os.replace(staging, target)
        except BaseException:
            if trash is not None:
                os.replace(trash / target.name, target)  # put the old folder back
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


# -----------------------------------------------------------------------------
# arrays + JSON metadata in one safetensors file

def _digest(arrays: dict[str, torch.Tensor], info: dict) -> str:
    """sha256 over the header JSON and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(canonical_json(info).encode("utf-8"))
    for name in sorted(arrays):
        t = arrays[name].contiguous()
        h.update(f"|{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_arrays(path, arrays: dict[str, torch.Tensor], info: dict, key: str) -> None:
    """Atomically write one .safetensors file: the arrays, plus `info` (with a sha256 over
    info and arrays) as canonical JSON under the single __metadata__ entry `key`. A single
    entry and sorted JSON keys make the bytes a pure function of the contents."""
    arrays = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    info = {**info, "sha256": _digest(arrays, info)}
    atomic_write_bytes(Path(path), st_save(arrays, metadata={key: canonical_json(info)}))


def load_arrays(path, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of save_arrays -> (arrays, info). ValueError if unreadable or corrupted. No pickle."""
    data = Path(path).read_bytes()
    try:
        arrays = st_load(data)  # validates the header and that offsets cover the buffer
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        info = json.loads(header["__metadata__"][key])
        if not isinstance(info, dict):
            raise TypeError("metadata is not a JSON object")
    except Exception as e:
        raise ValueError(f"unreadable file ({type(e).__name__}: {e})") from e
    if info.pop("sha256", None) != _digest(arrays, info):
        raise ValueError("checksum mismatch (corrupted file)")
    return arrays, info
