import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `make test` runs two pytest-xdist workers: each gets its share of the cores (one thread each on two cores), which its
# notebooks' kernels inherit. Two processes on one thread each get through more than one on two threads: a notebook's
# kernel start, papermill, tokenising and small matmuls barely use a second thread.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, _cores // _workers)))
# The offline data mirror, when it sits beside the repo (../shared/data: here and in CI); else the loaders go upstream.
if "EP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["EP_DATA_DIR"] = str(REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M base model in fp32 (the exactness tests compare with HF to 1e-5), cached."""
    import torch

    from ep.model.loading import load_model

    return load_model("gemma-3-270m", dtype=torch.float32)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium (selenium) for every test that opens a page: the browser, the sphere, the book, the slides.

    Skipped where Chromium is not installed (Debian: apt-get install chromium chromium-driver), except in CI
    (``CI`` set), which installs it: there a missing browser is a failure, not a skip."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        if os.environ.get("CI"):
            pytest.fail("CI needs headless Chromium: apt-get install chromium chromium-driver")
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.binary_location = binary
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


MODEL_FIXTURES = {"gemma", "qwen"}  # fixtures that load a real embedded model


def pytest_collection_modifyitems(items):
    """Every test that uses a model fixture is marked ``model``, so ``-m "not model"`` (make test-fast) skips it, and
    every test of tests/book/ ``book``. The notebooks run first and the book last: under two workers the many short
    tests fill in behind the long notebooks, and the book waits only for the notebooks still running, if any."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if item.path.parent.name == "book":
            item.add_marker(pytest.mark.book)
    items.sort(key=lambda item: (item.get_closest_marker("book") is not None,
                                 item.get_closest_marker("notebook") is None))


def run_dir(tmp_path_factory, name: str) -> Path:
    """A folder for this test run, shared by the pytest-xdist workers (their temp folders' parent), else in the temp."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(folder)`` once per test run, into ``run_dir(name)``: a second worker asking for it waits for the first's
    and reuses it (a failed make leaves no marker, so the next asker makes it again)."""
    from ep.method.files import one_maker

    folder = run_dir(tmp_path_factory, name)
    with one_maker(folder):
        if not (folder / ".made").exists():
            make(folder)
            (folder / ".made").write_text("")
    return folder


# -----------------------------------------------------------------------------
# the book and the slides are built from the notebooks this run executes (test_notebooks.py), once they have finished

EXECUTED = REPO / "outputs" / "tests"  # the notebook tests' executed copies
_NOTEBOOK_RUNS = pytest.StashKey[set]()


def run_id() -> str:
    """This pytest run's id: the one pytest-xdist gives every worker, or one made for this process."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or os.environ.setdefault("EP_TEST_RUN_ID", uuid.uuid4().hex)


def notebook_finished(stem: str, passed: bool) -> None:
    """Record that this run's execution of notebook ``stem`` has ended (test_notebooks.py calls it)."""
    done = EXECUTED / ".finished"
    done.mkdir(parents=True, exist_ok=True)
    (done / stem).write_text(f"{run_id()} {'passed' if passed else 'failed'}")


def pytest_collection_finish(session):
    session.config.stash[_NOTEBOOK_RUNS] = {item.callspec.params["path"].stem for item in session.items
                                            if item.originalname == "test_notebook_executes"}


@pytest.fixture(scope="session")
def executed_notebooks(request) -> Path:
    """The folder of executed notebooks the book and the slides are built from (``$EP_BOOK_EXECUTED`` overrides it).
    When this run executes the notebooks too (``make test``), first wait until each of them has finished: under
    pytest-xdist the other worker may still be running one."""
    if "EP_BOOK_EXECUTED" in os.environ:
        return Path(os.environ["EP_BOOK_EXECUTED"])
    waiting, start = set(request.config.stash.get(_NOTEBOOK_RUNS, set())), time.monotonic()
    while waiting:
        for stem in sorted(waiting):
            marker = EXECUTED / ".finished" / stem
            run, _, outcome = marker.read_text().partition(" ") if marker.exists() else ("", "", "")
            if run == run_id():
                if outcome != "passed":
                    pytest.fail(f"notebook {stem} failed in this run: no book is built from it")
                waiting.discard(stem)
        if waiting:
            if time.monotonic() - start > 3600:
                pytest.fail(f"still waiting for notebooks {sorted(waiting)} after an hour")
            time.sleep(2)
    return EXECUTED
