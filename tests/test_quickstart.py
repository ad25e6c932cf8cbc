"""The README's quickstart, run exactly as written (the code block under "## Quickstart"), in a scratch folder."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    section = README.read_text().split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quickstart_is_short():
    lines = [line for line in quickstart().splitlines() if line.strip()]
    assert 5 <= len(lines) <= 12, f"the quickstart has {len(lines)} lines"


@pytest.mark.model
def test_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(quickstart(), str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert (tmp_path / "my_dictionary.safetensors").exists() and out.count("Region ") == 2
    d = scope["d"]
    assert d.config.layer == 6 and int(d.counts.sum()) == 2_000 and d.calibration.threshold == d.threshold
    assigned = d.assign_texts(scope["model"], ["The river flows through the old city."])
    assert "".join(t for t, _, _ in assigned.text(0)) == "The river flows through the old city."
