"""Every numbered notebook, executed end to end by papermill with its own (smoke) parameters.

A new ``notebooks/NN_*.ipynb`` is picked up automatically. Executed copies land in ``outputs/tests/`` for
inspection; the notebooks' own asserts are the test. Two more ways to run them:

- **as a learner solves them**: each exercise's worked solution, copied from its dropdown, is pasted in place of the
  stub (the rest of the cell stays) and the check must pass; the code runs in the notebook's own namespace, so a
  solution that needs a name the notebook never imported fails here;
- **online, with no mirror**: notebooks that read data run with ``EP_DATA_DIR`` unset against a local stand-in of
  the hub and GitHub's raw files (tests/standin.py), real HTTP through the code a user runs, with empty data caches
  (the converted embedded models are shared: converting them is not what is tested here). The long ones run until
  the data calls named in ONLINE have been made.
"""

import json
import re
from pathlib import Path

import papermill
import pytest
from conftest import notebook_finished
from standin import StandIn

from ep import data
from ep.method import published

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# the notebooks whose data comes from upstream when there is no mirror: run whole (True) or, to keep CI's time, only
# until the data calls named have all been made once (their later cells compute on the same data; 03 streams the
# corpus whole, and 07's dictionary on it would take over two minutes)
DATA_CALLS = ("corpus(", "instructions(", "axbench_concepts(", "from_hub(")
ONLINE = {"00": True, "01": DATA_CALLS, "03": True, "04": DATA_CALLS, "07": ("axbench_concepts(",)}


def test_there_are_notebooks():
    assert NOTEBOOKS


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _parameters_source(path: Path) -> str:
    return "".join(next(c for c in _cells(path) if "parameters" in c["metadata"].get("tags", []))["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert "results_dir" in "".join(tagged[0]["source"])


MIRROR_ONLY = {p.name for p in (data.data_dir() or Path("/nonexistent")).glob("ep_hub/*")} | {
    f"{published.STAND_IN[0]}_L{published.STAND_IN[1]}"}  # the stand-in builds: no upstream has them


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_default_names_a_file_only_the_mirror_has(path, monkeypatch):
    """With no mirror, every default must name something upstream has: a published dictionary, not a stand-in."""
    source = _parameters_source(path)
    for line in source.splitlines():
        code = line.split("#")[0]
        assert not any(name in code for name in MIRROR_ONLY), line
    if not re.search(r"^model_short =", source, re.M):  # opens no published dictionary by default
        return
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    params: dict = {}
    exec(source, params)  # our own notebook's parameter cell: plain assignments
    if "compare_with" in params:
        choice = published.choose(params["model_short"], params["layer"], params["percentile"],
                                  params["compare_with"], params["model_name"])
        opened = [(choice["model_short"], choice["layer"], choice["percentile"]), *choice["compare_with"]]
    else:
        opened = [(params["model_short"], params["layer"], params["percentile"])]
    for model, layer, p in opened:
        assert p in published.PUBLISHED.get((model, layer), ()), f"{model} L{layer} p{p} is not published"


def pasted_solutions(path: Path, out: Path) -> Path:
    """A copy of the notebook with each exercise's dropdown solution pasted in place of its stub, as a learner would:
    the cell's own check then runs on the learner's function (the fill_solutions shortcut to ep's copy removed)."""
    nb = json.loads(path.read_text())
    shown = {}
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if "exercise" not in cell["metadata"].get("tags", []):
            continue
        if cell["cell_type"] == "markdown":
            code = re.search(r"<summary>Solution</summary>\s*```python\n(.*?)```", text, re.S).group(1)
            shown[re.match(r"def (\w+)\(", code).group(1)] = code
            continue
        name = re.search(r"^def (\w+)\(", text, re.M).group(1)
        stub = re.compile(rf"^def {name}\(.*?raise NotImplementedError\n", re.S | re.M)
        shortcut = f'if fill_solutions:\n    {name} = ep.exercises.solution("{name}")\n'
        assert stub.search(text) and shortcut in text, f"{path.name}: the {name} cell has an unexpected shape"
        solution = shown.pop(name)
        text = stub.sub(solution.replace("\\", "\\\\"), text, count=1).replace(shortcut, "")
        cell["source"] = text.splitlines(keepends=True)
    assert not shown, f"{path.name}: solutions with no exercise cell: {sorted(shown)}"
    out.write_text(json.dumps(nb))
    return out


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    out = REPO / "outputs" / "tests"
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results"
    parameters = {"results_dir": str(results)}
    source = path
    if "fill_solutions" in _parameters_source(path):  # the learner's way: solutions pasted, each check must pass
        parameters["fill_solutions"] = True
        source = pasted_solutions(path, tmp_path / path.name)
    if "check_claims" in _parameters_source(path):  # CI holds the defaults to the paper's claims
        parameters["check_claims"] = "raise"
    passed = False
    try:
        papermill.execute_notebook(str(source), str(out / path.name), cwd=str(path.parent),
                                   parameters=parameters, progress_bar=False)
        assert (results / f"{path.stem}.json").exists(), "the notebook must write its results JSON"
        passed = True
    finally:
        notebook_finished(path.stem, passed)  # the book test (tests/book) waits for this


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    if data.data_dir() is None:
        pytest.skip("the stand-in serves the offline mirror's files")
    server = StandIn(data.data_dir(), tmp_path_factory.mktemp("standin")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_models(tmp_path_factory):
    """A fresh EP_CACHE_DIR that shares the converted embedded models (symlinks to the usual cache's folders)."""
    from ep.model import loading

    home = tmp_path_factory.mktemp("ep-cache")
    for name in loading.EMBEDDED:
        real = loading._float_checkpoint(name)  # converted once, in the usual cache
        (home / name).symlink_to(real, target_is_directory=True)
    return home


def until_data_is_read(path: Path, out: Path, calls=DATA_CALLS) -> Path:
    """A copy of the notebook that ends with the code cell where the last of ``calls`` it makes is first made."""
    nb = json.loads(path.read_text())
    code = [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    firsts = [next(i for i, text in code if call in text) for call in calls if any(call in t for _, t in code)]
    nb["cells"] = nb["cells"][: max(firsts) + 1]
    out.write_text(json.dumps(nb))
    return out


@pytest.mark.notebook
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in ONLINE], ids=lambda p: p.stem)
def test_notebook_runs_online_with_no_mirror(path, standin, shared_models, tmp_path, monkeypatch):
    """EP_DATA_DIR unset: the notebook's data comes over HTTP from the stand-in, as a user's would from upstream."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    env = {**standin.env(), "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "EP_CACHE_DIR": str(tmp_path / "ep")}
    (tmp_path / "ep").mkdir()
    for link in shared_models.iterdir():
        (tmp_path / "ep" / link.name).symlink_to(link.resolve(), target_is_directory=True)
    for k, v in env.items():  # the kernel is a child process: it inherits this environment
        monkeypatch.setenv(k, v)
    standin.log.clear()
    out = tmp_path / "out"
    out.mkdir()
    whole = ONLINE[path.name[:2]] is True
    source = path if whole else until_data_is_read(path, tmp_path / path.name, ONLINE[path.name[:2]])
    papermill.execute_notebook(str(source), str(out / path.name), cwd=str(path.parent),
                               parameters={"results_dir": str(out / "results")}, progress_bar=False)
    assert (out / "results" / f"{path.stem}.json").exists() or not whole
    served = [p for _, p, status in standin.log if status in (200, 206)]
    assert served, "the notebook fetched nothing from the stand-in"
    assert not any(status >= 500 or status < 0 for _, _, status in standin.log)
