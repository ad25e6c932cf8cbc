"""Tests for ep.show.explorer, headless: the widget panel driven by setting values, and the static table."""

import numpy as np
import pytest
import torch

from ep.method.builder import build_dictionary
from ep.method.calibration import calibrate
from ep.model.activations import ActivationBatch as Batch
from ep.show.explorer import Explorer, region_texts, select_regions, table_html


@pytest.fixture(scope="module")
def d():
    g = np.random.default_rng(1)
    a = (3.0 * g.normal(size=(8, 10))[g.integers(0, 8, 600)] + g.normal(size=(600, 10)) + 2.0).astype(np.float32)
    i = torch.arange(len(a))
    batch = Batch(torch.from_numpy(a), i // 30, i % 30, i % 50)
    built = build_dictionary([batch], calibrate(a, 10.0, batch_size=300), n_samples=3, progress=False)
    return built.with_contexts(lambda doc, pos: (f"doc{doc} ", f"tok{doc}_{pos}", " end"))


def test_select_regions(d):
    counts, coh = d.counts.numpy(), d.coherence.numpy()
    ids = select_regions(d, "members")
    assert sorted(ids.tolist()) == list(range(len(d))) and (np.diff(counts[ids]) <= 0).all()
    ids = select_regions(d, "coherence", descending=False, min_members=3, min_coherence=0.5)
    assert set(ids.tolist()) == set(np.nonzero((counts >= 3) & (coh >= 0.5))[0].tolist())
    assert (np.diff(coh[ids]) >= 0).all()
    texts = region_texts(d)
    k = int(select_regions(d)[0])
    doc, pos, _ = d.exemplar_context[k].tolist()
    hits = select_regions(d, search=f"TOK{doc}_{pos}", texts=texts)  # case-insensitive
    assert k in hits.tolist() and all(f"tok{doc}_{pos}" in texts[j] for j in hits)
    with pytest.raises(ValueError, match="order"):
        select_regions(d, "size")
    with pytest.raises(ValueError, match="texts"):
        select_regions(d, search="x")


def test_static_table(d):
    html = Explorer(d, n=5, static=True)._repr_mimebundle_()
    assert set(html) == {"text/plain", "text/html"}
    table = html["text/html"]
    assert table.count("<tr>") == 6 and "<mark" in table and f"{len(d)} regions" in table
    top = int(select_regions(d)[0])
    assert f"<tr><td>{top}</td><td>{int(d.counts[top])}</td>" in table
    assert table_html(d, []).count("<tr>") == 1


def test_widget_headless(d):
    pytest.importorskip("ipywidgets")
    e = Explorer(d)
    bundle = e._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" in bundle  # fallback kept
    e.widget()
    assert e.choice.value == int(select_regions(d)[0]) and "region" in e.card.value
    e.order_box.value = "coherence"
    assert [v for _, v in e.choice.options] == select_regions(d, "coherence").tolist()
    e.min_members.value = 4
    assert all(int(d.counts[v]) >= 4 for _, v in e.choice.options)
    e.search.value = "no such text anywhere"
    assert e.choice.options == () and "no region" in e.card.value and "0 of" in e.status.value
    e.search.value = ""
    e.min_members.value = 1
    k = int(select_regions(d)[-1])
    e.choice.value = k
    doc, pos, _ = d.exemplar_context[k].tolist()
    assert f"region {k}:" in e.card.value and f"<b>tok{doc}_{pos}</b>" in e.card.value
    assert "nearest regions" in e.card.value and f"region {int(d.neighbours(k, 1)[0][0])} " in e.card.value
