"""make paper's table: one row per headline claim, read from the notebooks' results JSONs (their claims records)."""

import json

import ep
from ep.show import paper_table


def _results(folder, name, claims, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"model": "m", "layer": 20, "claims": claims, **extra}))


def test_rows_come_from_the_claims_records(tmp_path):
    c = ep.Claims("report")
    c.add("AxBench mean AUROC", holds=False, paper="0.881", measured="0.71 (20k tokens)")
    c.add("something else", holds=True, paper="-", measured="-")
    _results(tmp_path, "07_axbench", c.records(), percentile=1.0)
    _results(tmp_path, "05_matching", [])
    md = paper_table.table(tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == len(paper_table.HEADLINES)
    axbench = next(r for r in rows if "0.881 at p1" in r)
    assert "0.71 (20k tokens)" in axbench and "does not hold" in axbench and "percentile 1.0" in axbench
    assert "no claims record" in next(r for r in rows if "base vs instruct" in r)
    assert "not run" in next(r for r in rows if "refusal" in r)
    assert "Dry run" not in md


def test_a_dry_run_says_so(tmp_path):
    c = ep.Claims(False)
    c.add("refusal collapses", holds=True, paper="Δ", measured="Δ 0.0")
    _results(tmp_path, "04_refusal", c.records())
    md = paper_table.table(tmp_path)
    assert "**Dry run**" in md and "| dry run |" in md
