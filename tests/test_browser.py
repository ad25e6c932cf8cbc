"""Tests for ep.show.browser: the files it writes, escaping, and the site driven in headless Chromium."""

import json
import re

import numpy as np
import pytest
import torch
from browser_check import check_site

from ep.method.builder import build_dictionary
from ep.method.calibration import calibrate
from ep.model.activations import ActivationBatch as Batch
from ep.show import browser
from ep.show.browser import projection

EVIL = "<script>window.pwned=1</script>"


@pytest.fixture(scope="module")
def d():
    g = np.random.default_rng(2)
    a = (3.0 * g.normal(size=(8, 10))[g.integers(0, 8, 400)] + g.normal(size=(400, 10)) + 2.0).astype(np.float32)
    i = torch.arange(len(a))
    batch = Batch(torch.from_numpy(a), i // 20, i % 20, i % 50)
    built = build_dictionary([batch], calibrate(a, 10.0, batch_size=200), n_samples=3, progress=False)
    # every context's left text tries to inject a script; the token names its document and position
    return built.with_contexts(lambda doc, pos: (f"{EVIL} doc{doc} & ", f"tok{doc}_{pos}", " </body> end"))


@pytest.fixture(scope="module")
def site(d, tmp_path_factory):
    labels = {0: "first <b>label</b>", 1: "second label"}
    scores = {0: 0.9, 1: 0.25}
    lens = {0: {"exemplar": ["alpha", "<beta>"], "mean": ["gamma"]}}
    return browser(d, tmp_path_factory.mktemp("site"), labels=labels, scores=scores, lens=lens, title="test & site")


def test_projection_is_pca():
    g = np.random.default_rng(0)
    x = g.normal(size=(50, 6)) * np.array([10, 3, 0.1, 0.1, 0.1, 0.1])
    xy = projection(x)
    assert xy.shape == (50, 2) and abs(xy[:, 0].var() / x[:, 0].var() - 1) < 0.05
    assert projection(x[:1]).shape == (1, 2)  # one region: no second component, zeros fill in


def test_files(d, site):
    root = site.parent
    pages = sorted((root / "regions").glob("*.html"))
    assert len(pages) == len(d) and site.name == "index.html"
    index = site.read_text()
    data = json.loads(re.search(r"<script id='regions-data' type='application/json'>(.*?)</script>", index, re.S)[1])
    assert sorted(r["id"] for r in data) == list(range(len(d))) and np.all(np.diff([r["count"] for r in data]) <= 0)
    data = {r["id"]: r for r in data}
    assert data[0]["label"] == "first <b>label</b>" and data[0]["score"] == 0.9 and data[2]["score"] is None
    assert data[0]["lens"] == ["alpha", "<beta>", "gamma"]
    doc, pos, _ = d.exemplar_context[3].tolist()
    assert f"tok{doc}_{pos}" in data[3]["tokens"]
    assert index.count("<circle") == len(d) and index.count("href='regions/") == len(d)
    page = (root / "regions" / "0.html").read_text()
    assert "first &lt;b&gt;label&lt;/b&gt;" in page and "0.90" in page and "&#x27;&lt;beta&gt;&#x27;" in page
    assert f"{int(d.counts[0])}</td>" in page and "<mark" in page and "href='../index.html'" in page
    near, _ = d.neighbours(0, 5)
    assert all(f"href='{int(j)}.html'" in page for j in near)


def test_everything_is_escaped(site):
    for path in [site, *(site.parent / "regions").glob("*.html")]:
        text = path.read_text()
        assert EVIL not in text and "</body> end" not in text, path.name
        assert text.count("<script") == (2 if path == site else 0)


def test_subset_and_errors(d, tmp_path):
    browser(d, tmp_path)  # a first site in the same folder: its other pages must not stay behind
    index = browser(d, tmp_path, regions=[0, 2])
    assert sorted(p.stem for p in (tmp_path / "regions").glob("*.html")) == ["0", "2"]
    assert "pages for the 2 shown" in index.read_text()
    with pytest.raises(ValueError, match="regions"):
        browser(d, tmp_path, regions=[len(d)])
    with pytest.raises(ValueError, match="labels"):
        browser(d, tmp_path, labels=["x"])


def test_in_chromium(d, site, chromium):
    check_site(chromium, site, search="second", expect=1)
    assert not chromium.execute_script("return window.pwned")
