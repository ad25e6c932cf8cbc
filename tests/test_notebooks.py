"""Every numbered notebook, executed end to end by papermill with its own (smoke) parameters.

A new ``notebooks/NN_*.ipynb`` is picked up automatically. Executed copies land in
``outputs/tests/`` for inspection; the notebooks' own asserts are the test.
"""

import json
from pathlib import Path

import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


def _parameters_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert "results_dir" in "".join(tagged[0]["source"])


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    out = REPO / "outputs" / "tests"
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results"
    parameters = {"results_dir": str(results)}
    if "fill_solutions" in _parameters_source(path):  # run the exercises' worked solutions: each check must pass
        parameters["fill_solutions"] = True
    if "check_claims" in _parameters_source(path):  # CI holds the defaults to the paper's claims
        parameters["check_claims"] = "raise"
    papermill.execute_notebook(str(path), str(out / path.name), cwd=str(path.parent),
                               parameters=parameters, progress_bar=False)
    assert (results / f"{path.stem}.json").exists(), "the notebook must write its results JSON"
