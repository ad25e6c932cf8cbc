import os
import shutil
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
    """Every test that uses a model fixture is marked ``model``, so ``-m "not model"`` (make test-fast) skips it.
    The notebooks run first: under two workers the many short tests then fill in behind the long ones."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
    items.sort(key=lambda item: item.get_closest_marker("notebook") is None)

# The book test renders notebooks executed by the notebook tests: `make test` runs it second, on purpose.
collect_ignore = [] if os.environ.get("EP_BOOK_TEST") else ["book"]
