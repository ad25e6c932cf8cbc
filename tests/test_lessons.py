"""Notebooks are lessons: no history of the project in them (what a notebook "used to" do, what "the issue" asked)."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HISTORY = re.compile(r"used to (?!build|train|score|choose|pick|make the|find)|\bthe issue\b|\bissue #?\d+|"
                     r"(this notebook'?s?|an) earlier (reading|version|protocol|recipe)|earlier protocol|"
                     r"\bpreviously\b|\bno longer\b|\bformerly\b|the old recipe|what this notebook (did|once)", re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_project_history(path):
    cells = json.loads(path.read_text())["cells"]
    found = [f"cell {i}: …{m.string[max(0, m.start() - 40):m.end() + 30]}…"
             for i, c in enumerate(cells) for m in HISTORY.finditer("".join(c["source"]))]
    assert not found, f"{path.name} tells the project's history: " + "; ".join(found)
