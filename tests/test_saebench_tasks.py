"""SAEBench sparse_probing tasks (ep.studies.probes.saebench_task), with the hub mocked.

``datasets.load_dataset`` is replaced by a fake that streams small in-memory rows in each dataset's column
format as SAEBench reads it (sae_bench/sae_bench_utils/dataset_utils.py). This checks our labels, classes,
balance, seeding, bounds and the offline error; it cannot check that the real hub rows still look like this.
"""

import itertools

import datasets
import numpy as np
import pytest

from ep.studies import probes as P

GENDERS = (0, 1)


def _bios_rows():
    for i in itertools.count():  # every profession, both genders, endless (the loader must stop by itself)
        p, g = i % 28, (i // 28) % 2
        yield {"hard_text": f"bio {P._PROFESSIONS[p]} g{g} #{i}", "profession": p, "gender": g}


def _amazon_rows():
    for i in itertools.count():
        c, r = i % 34, (1.0, 5.0)[(i // 34) % 2]
        yield {"text": f"review c{c} r{r} #{i}", "category": c, "rating": r}


def _github_rows(n=4000):
    langs = ["C", "Python", "HTML", "Java", "PHP", "Rust", "Go"]
    for i in range(n):
        lang = langs[i % len(langs)]
        length = 300 if i % 3 == 0 else 900  # a third too short for SAEBench's 534-character minimum
        yield {"code": f"LICENCE{i:06d}".ljust(150, "#") + f"{lang} body #{i} ".ljust(length - 150, "x"),
               "repo_name": "r", "path": "p", "language": lang, "license": "mit", "size": length}


def _ag_rows():
    for i in itertools.count():
        yield {"text": f"news label{i % 4} #{i}", "label": i % 4}


def _europarl_rows(pair):
    a, b = pair.split("-")
    for i in itertools.count():
        yield {"translation": {a: f"{a} sentence #{i}", b: f"{b} sentence #{i}"}}


@pytest.fixture
def hub(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, *, split, streaming, **kwargs):
        calls.append((path, name, split, streaming, kwargs))
        assert streaming and split == "train"
        if path == "LabHC/bias_in_bios":
            return _bios_rows()
        if path == "canrager/amazon_reviews_mcauley_1and5":
            return _amazon_rows()
        if path == "parquet":
            assert all(f.startswith("hf://datasets/codeparrot/github-code/data/") for f in kwargs["data_files"])
            return _github_rows()
        if path == "fancyzhx/ag_news":
            return _ag_rows()
        if path == "Helsinki-NLP/europarl":
            return _europarl_rows(name)
        raise AssertionError(path)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


EXPECTED = {
    "bias_in_bios_set1": ["accountant", "architect", "attorney", "dentist", "filmmaker"],
    "bias_in_bios_set2": ["journalist", "nurse", "painter", "photographer", "physician"],
    "bias_in_bios_set3": ["poet", "professor", "psychologist", "surgeon", "teacher"],
    "amazon_categories": ["Toys_and_Games", "Cell_Phones_and_Accessories", "Industrial_and_Scientific",
                          "Musical_Instruments", "Electronics"],
    "amazon_sentiment": ["1 star", "5 stars"],
    "github_code": ["C", "Python", "HTML", "Java", "PHP"],
    "ag_news": ["World", "Sports", "Business", "Sci/Tech"],
    "europarl": ["en", "fr", "de", "es", "nl"],
}
# what each class's texts must contain (the fake rows name their class in the text)
MARK = {
    "amazon_categories": {"Toys_and_Games": "c1 ", "Cell_Phones_and_Accessories": "c2 ",
                          "Industrial_and_Scientific": "c3 ", "Musical_Instruments": "c5 ", "Electronics": "c6 "},
    "amazon_sentiment": {"1 star": "r1.0", "5 stars": "r5.0"},
    "ag_news": {c: f"label{i}" for i, c in enumerate(EXPECTED["ag_news"])},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_classes_labels_balance(hub, name):
    task = P.saebench_task(name, n_per_class=8, seed=0)
    assert task.classes == EXPECTED[name] and set(P.SAEBENCH_TASKS) == set(EXPECTED)
    assert np.bincount(task.labels).tolist() == [8] * len(task.classes)
    assert len(set(task.texts)) == len(task.texts)
    for text, label in zip(task.texts, task.labels):
        cls = task.classes[label]
        mark = MARK.get(name, {}).get(cls) or {"github_code": f"{cls} body", "europarl": f"{cls} sentence"}.get(
            name, f"bio {cls} ")
        assert mark in text, (name, cls, text)
    if name.startswith("bias") or name == "amazon_categories":  # balanced by gender / rating within a class
        key = ("g0", "g1") if name.startswith("bias") else ("r1.0", "r5.0")
        for c in range(len(task.classes)):
            texts = [t for t, y in zip(task.texts, task.labels) if y == c]
            assert [sum(k in t for t in texts) for k in key] == [4, 4]
    # the binary tasks notebook 06 makes of it
    for idx, y in P.one_vs_rest(task.labels, task.classes).values():
        assert y.sum() * 2 == len(idx)


def test_seed_determinism(hub):
    a, b = P.saebench_task("ag_news", 10, seed=1), P.saebench_task("ag_news", 10, seed=1)
    c = P.saebench_task("ag_news", 10, seed=2)
    assert a.texts == b.texts and (a.labels == b.labels).all()
    assert set(a.texts) != set(c.texts) and (a.labels == c.labels).all()


def test_github_code_follows_saebench(hub):
    task = P.saebench_task("github_code", n_per_class=5)
    assert all(not t.startswith("LICENCE") and len(t) > 534 - 150 for t in task.texts)  # header skipped
    assert not any("Rust" in t or "Go body" in t for t in task.texts)


def test_europarl_one_config_per_language(hub):
    P.saebench_task("europarl", n_per_class=3)
    assert [(c[0], c[1]) for c in hub] == [("Helsinki-NLP/europarl", p) for p in
                                          ("en-fr", "fr-it", "de-en", "es-fr", "nl-pt")]


def test_bounded_stream_and_short_class(hub, monkeypatch):
    rows = ({"text": f"news label{i % 4} #{i}", "label": i % 4 if i < 40 else 0} for i in range(10**6))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    task = P.saebench_task("ag_news", n_per_class=50, max_rows=1000)
    assert np.bincount(task.labels).tolist() == [10] * 4  # every class lowered to the shortest one
    assert next(rows)["text"].endswith("#1000")  # stopped at max_rows, not at the end of the stream


def test_stops_when_full(hub):
    P.saebench_task("bias_in_bios_set1", n_per_class=4, pool=2)  # the fake stream is endless


def test_unknown_and_empty(hub, monkeypatch):
    with pytest.raises(ValueError, match="unknown SAEBench task"):
        P.saebench_task("imdb")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter([{"text": "w", "label": 0}]))
    with pytest.raises(ValueError, match="Sports"):
        P.saebench_task("ag_news", 5)


def test_without_internet_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="ag_news rows from upstream.*leave the SAEBench tasks out"):
        P.saebench_task("ag_news", 5)

    def dies_midway(*args, **kwargs):  # a stream that fails while it is read gives the same error
        yield {"text": "news", "label": 0}
        raise TimeoutError("read timed out")

    monkeypatch.setattr(datasets, "load_dataset", dies_midway)
    with pytest.raises(ConnectionError, match="TimeoutError"):
        P.saebench_task("ag_news", 5)


def test_hub_client_errors_are_network_errors_too(monkeypatch):
    """huggingface_hub's own HTTP client raises httpx (httpx2 in hub 2.x) errors, not OSErrors (seen here:
    github-code's hf:// parquet files offline gave a bare httpx2.ConnectError)."""
    httpx = pytest.importorskip("httpx")

    def offline(*args, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="github_code rows from upstream.*ConnectError"):
        P.saebench_task("github_code", 5)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: 1 / 0)  # other errors pass through unchanged
    with pytest.raises(ZeroDivisionError):
        P.saebench_task("github_code", 5)
