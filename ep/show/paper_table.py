"""``make paper``: run every notebook at its paper-scale parameters and score the run against the paper's table.

The paper-scale values live in one place, the notebooks' parameter cells, as comments:

    percentile = 1.0  # paper: 10 (build_partitions.py main --percentile)     <- a line of the official code
    max_tokens = 3000  # paper scale: 100_000                                 <- this repo's size for a GPU run

``paper:`` marks a value a line of the official code uses, with the file and function it comes from
(``tests/test_official_defaults.py`` holds every one to a table of official values); ``paper scale:`` marks this
repo's choice for a GPU run. :func:`paper_parameters` reads both (the value is the Python literal after the
marker). :func:`run` executes the notebooks with them (papermill, claims reported, never raised) and :func:`table`
writes ``paper_table.md``: one row per headline claim of the paper, the paper's value, this run's value, its
verdict and the conditions, read from the ``claims`` records of the notebooks' results JSONs (``ep.Claims``).

    python -m ep.show.paper_table --out outputs/paper       # one GPU, internet and HF_TOKEN (make paper)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from pathlib import Path

MARKERS = ("paper", "paper scale")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*=\s*[^#]*#(?P<comment>.*)$")
_MARK = re.compile(r"\b(?P<kind>paper scale|paper): (?P<rest>.+)$")

# The paper's headline claims (README of the official repository), where each is measured, and how the notebook
# names its claim: the first claim whose name holds one of the keys (case-insensitive) is the row's.
HEADLINES = [
    {"claim": "refusal: exemplar ablation collapses held-out refusal (Δ)", "notebook": "04_refusal",
     "keys": ("refusal",), "paper": "Δ of held-out harmful refusal at K = 1 (make_fig_refusal.py, p ∈ 5..20)"},
    {"claim": "base vs instruct matching separates preserved from introduced directions",
     "notebook": "05_matching", "keys": ("base vs instruct", "matching"),
     "paper": "Gemma-2-2B vs -it, layer 20 (match_dictionaries.py, cutoff 0.7)"},
    {"claim": "~20% of EP regions match an SAE feature at F1 > 0.5", "notebook": "06_sae",
     "keys": ("f1", "sae"), "paper": "~20% (compare_sae.py, Gemma Scope)"},
    {"claim": "EP one-hot probes retain ~97% of raw-activation probe accuracy at l0 = 1", "notebook": "06_sae",
     "keys": ("retain", "retention", "probe"), "paper": "~97% (SAEBench sparse_probing)"},
    {"claim": "nearest-exemplar distance is a free OOD signal", "notebook": "03_ood",
     "keys": ("ood", "distance"), "paper": "within-θ rate falls out of distribution (exp_coverage.py)"},
    {"claim": "AxBench latent detection: mean AUROC 0.881 at p1", "notebook": "07_axbench",
     "keys": ("axbench", "auroc", "0.881"), "paper": "0.881 (Gemma-2-2B-it L20 p1, 10M Pile tokens)"},
]
CONDITIONS = ("model", "layer", "percentile", "tokens", "max_tokens", "build_tokens", "stream_tokens")


def literal_prefix(text: str):
    """The longest prefix of ``text`` that is a Python literal, evaluated: ``10 (a note)`` -> 10 (else ValueError)."""
    text = text.strip()
    for end in range(len(text), 0, -1):
        try:
            return ast.literal_eval(text[:end].strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise ValueError(f"no Python literal at the start of {text!r}")


def parameter_source(notebook: Path) -> str:
    """The source of the notebook's one cell tagged ``parameters``."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    return "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])


def paper_comments(notebook: Path) -> list[dict]:
    """Every ``name = ...  # ... paper: VALUE ...`` (or ``paper scale:``) line of the parameter cell:
    dicts with name, kind ("paper" or "paper scale"), value, parsed (False: no literal after the marker, value
    None) and note (the text after the marker)."""
    found = []
    for line in parameter_source(notebook).splitlines():
        assignment = _ASSIGNMENT.match(line)
        mark = _MARK.search(assignment["comment"]) if assignment else None
        if not mark:
            continue
        try:
            value, parsed = literal_prefix(mark["rest"]), True
        except ValueError:
            value, parsed = None, False
        found.append({"name": assignment["name"], "kind": mark["kind"], "value": value, "parsed": parsed,
                      "note": mark["rest"]})
    return found


def paper_parameters(notebook: Path) -> dict:
    """The notebook's paper-scale parameters: every ``paper:`` and ``paper scale:`` value that parses."""
    return {c["name"]: c["value"] for c in paper_comments(notebook) if c["parsed"]}


def _claim(records: list[dict], keys: tuple[str, ...]) -> dict | None:
    for key in keys:
        for record in records:
            if key in record.get("name", "").lower():
                return record
    return None


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table(results_dir: Path) -> str:
    """``paper_table.md`` from the results JSONs in ``results_dir`` (one row per headline claim)."""
    results_dir = Path(results_dir)
    rows, verdicts = [], []
    for headline in HEADLINES:
        path = results_dir / f"{headline['notebook']}.json"
        if not path.exists():
            rows.append((headline["claim"], headline["paper"], "not run", "—", headline["notebook"]))
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        record = _claim(results.get("claims") or [], headline["keys"])
        conditions = ", ".join(f"{k} {results[k]}" for k in CONDITIONS if isinstance(results.get(k), (str, int, float)))
        conditions = f"{headline['notebook']}: {conditions}" if conditions else headline["notebook"]
        if record is None:
            rows.append((headline["claim"], headline["paper"], "no claims record in the results", "—", conditions))
            continue
        measured = record["measured"] + (f" ({record['note']})" if record.get("note") else "")
        verdicts.append(record["verdict"])
        rows.append((headline["claim"], record.get("paper") or headline["paper"], measured, record["verdict"],
                     conditions))
    for path in sorted(results_dir.glob("*.json")):  # a dry run is a run whose every recorded claim says so
        verdicts += [c.get("verdict") for c in json.loads(path.read_text(encoding="utf-8")).get("claims") or []]
    dry = bool(verdicts) and all(v == "dry run" for v in verdicts)
    head = ["# The paper's headline claims, and this run", ""]
    head += (["**Dry run**: random weights at the paper's shapes; the verdicts say nothing about the paper.", ""]
             if dry else [])
    lines = ["| claim | the paper | this run | verdict | conditions |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return "\n".join(head + lines) + "\n"


def notebooks(root: Path) -> list[Path]:
    """The numbered notebooks with paper-scale values in their parameter cells."""
    return [p for p in sorted(Path(root).glob("[0-9][0-9]_*.ipynb")) if paper_parameters(p)]


def run(notebook_dir: Path, out: Path, only: list[str] | None = None, overrides: dict | None = None) -> dict[str, str]:
    """Execute each notebook at its paper-scale parameters (plus ``overrides``); claims are reported, not raised.
    Returns {notebook: "ok" or the error}; the executed copies and results land in ``out``."""
    import papermill

    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    status = {}
    for path in notebooks(notebook_dir):
        if only and not any(path.stem.startswith(o) for o in only):
            continue
        parameters = {**paper_parameters(path), "check_claims": "report", "results_dir": str(out / "results"),
                      **(overrides or {})}
        try:
            papermill.execute_notebook(str(path), str(out / path.name), cwd=str(path.parent), parameters=parameters)
            status[path.stem] = "ok"
        except Exception as e:  # one failed notebook must not stop the others: its row says "not run"
            status[path.stem] = f"{type(e).__name__}: {str(e)[:200]}"
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=Path, default=Path(__file__).resolve().parents[2] / "notebooks")
    parser.add_argument("--out", type=Path, default=Path("outputs/paper"))
    parser.add_argument("--table", type=Path, default=Path("outputs/paper_table.md"))
    parser.add_argument("--only", nargs="*", help="notebook numbers, e.g. 02 05 (default: all)")
    parser.add_argument("--table-only", action="store_true", help="assemble the table from --out/results, run nothing")
    args = parser.parse_args(argv)
    if not args.table_only:
        if not os.environ.get("HF_TOKEN"):
            print("warning: HF_TOKEN is not set; google/gemma-2-2b(-it) are gated (or run `hf auth login`)",
                  file=sys.stderr)
        for name, state in run(args.notebooks, args.out, args.only).items():
            print(f"{name}: {state}")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table(args.out / "results"), encoding="utf-8")
    print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
