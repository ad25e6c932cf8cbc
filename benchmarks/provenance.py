"""What every benchmark result file records beside its numbers: the commit, the command line and the machine.

Run the benchmarks from a checkout (``python benchmarks/NAME.py ...``). A commit whose tracked files have local
changes is marked ``+changes``: its numbers belong to no commit exactly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checkout's short commit hash, ``+changes`` when tracked files differ from it."""
    git = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        "+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def command() -> str:
    """The command line that ran this benchmark, from the repository root."""
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def run_record() -> dict:
    """``commit``, ``command``, ``machine`` (``ep.show.notebook.machine``) and ``date``: for every result file."""
    from ep.show.notebook import machine

    return {"commit": commit(), "command": command(), "machine": machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}


def provenance_line(record: dict) -> str:
    """The record as the first line of a markdown result."""
    m = record["machine"]
    where = m.get("gpu") or m.get("cpu", "?")
    threads = m.get("threads", m.get("torch_threads", "?"))
    return (f"`{record['command']}` at commit {record['commit']}, {record.get('date', '')}; {where}, "
            f"{threads} torch threads, torch {m.get('torch', '?')}.")
