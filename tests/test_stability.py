"""Tests for ep.studies.stability on synthetic clustered activations (no model needed)."""

import numpy as np
import pytest
import torch

from ep.method.builder import build_dictionary
from ep.method.calibration import Calibration
from ep.model.activations import ActivationBatch
from ep.studies import stability as S


def _stream(n_docs=30, per_doc=20, d=16, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    acts = centres[rng.integers(0, k, size=n_docs * per_doc)] + rng.normal(size=(n_docs * per_doc, d)) * 0.3
    doc = np.repeat(np.arange(n_docs), per_doc)
    pos = np.tile(np.arange(1, per_doc + 1), n_docs)
    return ActivationBatch(torch.tensor(acts, dtype=torch.float32), torch.tensor(doc), torch.tensor(pos),
                           torch.tensor(rng.integers(0, 100, size=len(doc))))


def _cal(batch, theta=0.3):
    return Calibration(centre=torch.zeros(batch.acts.shape[1]), threshold=theta, percentile=1.0, n_tokens=len(batch))


def test_reorder_keeps_documents_whole_and_tokens_the_same():
    b = _stream()
    r = S.reorder_documents(b, seed=3)
    assert sorted(r.acts.sum(1).tolist()) == pytest.approx(sorted(b.acts.sum(1).tolist()))
    change = torch.nonzero(r.doc[1:] != r.doc[:-1]).numel()
    assert change == len(torch.unique(b.doc)) - 1  # each document is one contiguous run
    for d in torch.unique(r.doc):
        assert torch.all(torch.diff(r.pos[r.doc == d]) > 0)
    assert not torch.equal(r.doc, b.doc)


def test_same_order_is_perfectly_stable_and_clusters_are_found_in_any_order():
    b = _stream()
    same = S.build_in_orders(b, _cal(b), seeds=[1, 1])
    assert all(np.allclose(v, 1.0) for v in S.region_stability(same).values())
    orders = S.build_in_orders(b, _cal(b), seeds=[0, 1, 2])
    p = S.pair_cosines(orders[0], orders[1])
    assert p["mean"].shape == p["exemplar"].shape
    # six well-separated clusters: mean directions agree almost exactly across orders, exemplars less so
    assert np.median(S.region_stability(orders)["mean"]) > 0.95
    assert p["mean"].mean() >= p["exemplar"].mean() - 1e-6


def test_resolution_parents_nest():
    fine = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    coarse = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    parent, share = S.resolution_parents(fine, coarse, n_fine=5)
    assert parent.tolist() == [0, 0, 1, 1, -1]
    assert share.tolist() == pytest.approx([1.0, 2 / 3, 1.0, 1.0, 0.0])


def test_saturation_stop_counts_batches_of_documents():
    from ep.method.builder import saturation_stop

    # one point per batch of 128 documents: stop after `window` quiet batches
    docs = np.arange(1, 9) * 128
    assert saturation_stop(docs, [5, 9, 9, 9, 10, 10, 10, 10], window=3) == 7
    assert saturation_stop(docs[:3], [5, 9, 12], window=1) is None
    assert saturation_stop(docs[:3], [5, 9, 9], window=1) == 2
    # points every 16 documents: quiet within a batch of 128 is not quiet; only whole batches count
    fine = np.arange(1, 25) * 16                         # 3 batches of 128
    regions = np.r_[np.arange(1, 9), np.full(8, 8), np.full(8, 9)]
    assert saturation_stop(fine, regions, window=1) == 15  # batch 2 (points 8..15) added nothing
    assert saturation_stop(fine, regions, window=1, docs_per_batch=16) == 8
    with pytest.raises(ValueError):
        saturation_stop([100, 300], [3, 4])                # no point at 128 documents


def test_the_builder_stops_where_saturation_stop_says():
    from ep.method.builder import saturation_stop

    b = _stream()
    batches = S.by_documents(b, docs_per_batch=4)
    docs, tokens, curve = S.new_regions_curve(batches, _cal(b))
    assert docs[-1] == len(torch.unique(b.doc)) and tokens[-1] == len(b) and len(curve) == 8
    assert np.all(np.diff(curve) >= 0)
    full = build_dictionary([b], _cal(b), progress=False, n_samples=0)
    assert curve[-1] == len(full)
    repeated = batches[:2] + [batches[1]] * 3  # the second batch again: nothing new
    docs, tokens, curve = S.new_regions_curve(repeated, _cal(b))
    stop = saturation_stop(np.arange(1, 6) * 4, curve, window=2, docs_per_batch=4)
    stopped = build_dictionary(repeated, _cal(b), progress=False, n_samples=0, saturation_window=2)
    assert stop is not None and stopped.meta["saturated_after_tokens"] == tokens[stop]
