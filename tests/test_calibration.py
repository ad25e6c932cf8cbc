"""Tests for ep.method.calibration: spherical centre, percentile threshold, cache."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from calibration_data import synthetic_documents
from scipy.spatial.distance import pdist

from ep.method.batch import ActivationBatch
from ep.method.calibration import (
    Calibration,
    _blocked_percentile,
    batch_percentiles,
    cached_calibration,
    calibrate,
    document_batches,
    key_hash,
    pairwise_percentile,
    percentile_threshold,
    spherical_centre,
    to_directions,
)


def _acts(n=600, d=12, seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, d)) + 3.0).astype(np.float32)  # offset: a real common component


def test_spherical_centre_hand_example():
    a = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # unit rows [1,0],[0,1] -> direction [1,1]/√2; mean(a) = [1, .5] -> magnitude 1.5/√2
    np.testing.assert_allclose(spherical_centre(a).numpy(), [0.75, 0.75], rtol=1e-6)


def test_spherical_centre_definition():
    a = _acts()
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    direction = unit.mean(0) / np.linalg.norm(unit.mean(0))
    want = direction * (a.mean(0) @ direction)
    got = spherical_centre(torch.from_numpy(a), chunk_size=7)  # chunking must not matter
    assert got.dtype == torch.float32 and got.shape == (12,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_to_directions_unit_and_zero_guard():
    a = _acts(50)
    c = spherical_centre(a)
    u = to_directions(a, c)
    assert u.dtype == torch.float32
    np.testing.assert_allclose(u.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    z = to_directions(c[None, :], c)  # a == c: zero row, not NaN
    assert torch.equal(z, torch.zeros_like(z))
    with pytest.raises(ValueError, match="shape"):
        to_directions(a[:, :5], c)


def test_threshold_equals_bruteforce_pdist_one_batch():
    a = _acts(300)
    u = to_directions(a, spherical_centre(a)).numpy().astype(np.float64)
    for p in (1, 5, 37.5):
        want = np.percentile(pdist(u, "cosine"), p)
        got = percentile_threshold(u, p, batch_size=1024)  # batch >= N: one batch, all pairs
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_threshold_averages_over_shuffled_batches():
    a = _acts(3 * 100 + 17)
    u = to_directions(a, spherical_centre(a)).numpy()
    perm = torch.randperm(len(u), generator=torch.Generator().manual_seed(7)).numpy()
    per = [np.percentile(pdist(u[perm[i * 100:(i + 1) * 100]].astype(np.float64), "cosine"), 3)
           for i in range(3)]  # ragged tail of 17 dropped
    got = batch_percentiles(u, 3, batch_size=100, seed=7)
    np.testing.assert_allclose(got, per, rtol=1e-5, atol=1e-6)
    assert percentile_threshold(u, 3, batch_size=100, seed=7) == pytest.approx(np.mean(per), rel=1e-5)
    assert percentile_threshold(u, 3, batch_size=100, seed=8) != percentile_threshold(u, 3, 100, 7)
    assert percentile_threshold(u, 1, 100, 7) < percentile_threshold(u, 10, 100, 7)  # smaller p, smaller θ


@pytest.mark.parametrize("p", [0, 100, -1, 101, float("nan")])
def test_percentile_bounds(p):
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(_acts(20), p)
    with pytest.raises(ValueError, match="percentile"):
        calibrate(_acts(20), p)


def test_bad_inputs():
    a = _acts(20)
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibrate(bad, 1)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        spherical_centre(bad)
    with pytest.raises(ValueError, match="empty"):
        calibrate(np.zeros((0, 4), np.float32), 1)
    with pytest.raises(ValueError, match="at least 2"):
        percentile_threshold(a[:1], 1)
    with pytest.raises(ValueError, match="batch_size"):
        percentile_threshold(a, 1, batch_size=1)
    with pytest.raises(ValueError, match="shape"):
        calibrate(a[0], 1)
    dup = np.concatenate([np.repeat(a[:1], 30, 0), a[1:]])  # a third of rows identical
    with pytest.raises(ValueError, match="degenerate threshold"):
        calibrate(dup, 5)


def test_calibrate_consistent_and_deterministic():
    a = _acts()
    cal = calibrate(a, 2.0, batch_size=128, seed=3, meta={"model": "toy", "layer": 4})
    assert torch.equal(cal.centre, spherical_centre(a))
    assert cal.threshold == percentile_threshold(to_directions(a, cal.centre), 2.0, 128, 3)
    assert (cal.percentile, cal.n_tokens, cal.batch_size, cal.seed) == (2.0, 600, 128, 3)
    assert cal.meta == {"model": "toy", "layer": 4}
    assert calibrate(a, 2.0, batch_size=128, seed=3).threshold == cal.threshold
    assert "threshold" in repr(cal)


def test_save_load_roundtrip(tmp_path):
    cal = calibrate(_acts(), 1.0, meta={"model": "toy"})
    cal.save(tmp_path / "c.safetensors")
    back = Calibration.load(tmp_path / "c.safetensors")
    assert torch.equal(back.centre, cal.centre) and back.threshold == cal.threshold
    assert (back.percentile, back.n_tokens, back.seed, back.meta) == (1.0, 600, 0, {"model": "toy"})
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "c.safetensors").read_bytes()[:-5])
    with pytest.raises(ValueError, match="not a valid calibration"):
        Calibration.load(tmp_path / "bad.safetensors")


def test_cache_hit_miss_and_key_mismatch(tmp_path):
    a = _acts()
    calls = []

    def compute(p=1.0):
        calls.append(p)
        return calibrate(a, p, meta={"p": p})

    key = {"model": "toy", "layer": 3, "percentile": 1.0, "n_tokens": 600, "seed": 0}
    c1 = cached_calibration(key, compute, tmp_path)
    c2 = cached_calibration(dict(reversed(list(key.items()))), compute, tmp_path)  # same key, other order
    assert len(calls) == 1 and torch.equal(c1.centre, c2.centre) and c1.threshold == c2.threshold
    key5 = {**key, "percentile": 5.0}
    c3 = cached_calibration(key5, lambda: compute(5.0), tmp_path)  # miss: different key
    assert len(calls) == 2 and c3.threshold > c1.threshold
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # a file stored under key's name but holding another key is ignored and overwritten
    f1 = tmp_path / f"calibration-{key_hash(key)[:16]}.safetensors"
    f5 = tmp_path / f"calibration-{key_hash(key5)[:16]}.safetensors"
    f1.write_bytes(f5.read_bytes())
    c4 = cached_calibration(key, compute, tmp_path)
    assert len(calls) == 3 and c4.threshold == c1.threshold
    assert cached_calibration(key, compute, tmp_path).threshold == c1.threshold and len(calls) == 3
    # a corrupted cache file is ignored (with a warning) and recomputed
    f1.write_bytes(f1.read_bytes()[:50])
    with pytest.warns(UserWarning, match="unreadable"):
        cached_calibration(key, compute, tmp_path)
    assert len(calls) == 4
    with pytest.raises(TypeError):
        cached_calibration({"x": 1}, lambda: 42, tmp_path)


# -----------------------------------------------------------------------------
# whole-document batches (the paper's protocol) and the exact percentile of large batches

@pytest.mark.parametrize("p", [0.5, 1.0, 10.0, 50.0, 99.0])
def test_blocked_percentile_equals_in_memory(p):
    u = to_directions(_acts(500, 24, seed=5), spherical_centre(_acts(500, 24, seed=5)))
    want = np.percentile(pdist(u.numpy().astype(np.float64), "cosine"), p)
    in_memory = pairwise_percentile(u, p)
    blocked = pairwise_percentile(u, p, max_pairs=1000, block_rows=128)  # forces the blocked path
    assert in_memory == pytest.approx(want, abs=1e-6)
    assert blocked == pytest.approx(in_memory, abs=1e-6)
    assert _blocked_percentile(u, p, block_rows=100, sample=2) == pytest.approx(in_memory, abs=1e-6)  # bracket misses


def test_pairwise_percentile_hand_example_and_errors():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # distances 1, 2, 1
    assert pairwise_percentile(u, 50) == 1.0
    assert pairwise_percentile(u, 75) == pytest.approx(1.5)  # numpy's linear rule between the 2nd and 3rd value
    with pytest.raises(ValueError, match="at least 2 rows"):
        pairwise_percentile(u[:1], 50)


def test_document_batches_group_whole_documents_in_order():
    doc = torch.tensor([5, 5, 5, 2, 9, 9, 7, 7, 7, 7])
    assert [b.tolist() for b in document_batches(doc, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert [b.tolist() for b in document_batches(doc, 3)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert [b.tolist() for b in document_batches(doc, 100)] == [list(range(10))]
    with pytest.raises(ValueError, match="contiguous"):
        document_batches(torch.tensor([0, 0, 1, 0]), 2)
    with pytest.raises(ValueError, match="docs_per_batch"):
        document_batches(doc, 0)


def test_calibrate_by_documents_is_the_mean_over_document_batches():
    acts, doc = synthetic_documents("small")
    zeros = torch.zeros(len(doc), dtype=torch.int64)
    batch = ActivationBatch(torch.as_tensor(acts), torch.as_tensor(doc), zeros, zeros)
    cal = calibrate(batch, 3.0, docs_per_batch=16)
    assert (cal.protocol, cal.docs_per_batch) == ("documents", 16)
    u = to_directions(acts, spherical_centre(acts)).numpy().astype(np.float64)
    groups = [u[np.isin(doc, range(s, s + 16))] for s in range(0, doc.max() + 1, 16)]  # 16, 16, 8 documents
    want = np.mean([np.percentile(pdist(x, "cosine"), 3.0) for x in groups])
    assert cal.threshold == pytest.approx(want, abs=1e-6)
    rows = calibrate(acts, 3.0)  # a plain array: shuffled rows (the control)
    assert rows.protocol == "rows" and rows.docs_per_batch is None
    assert abs(rows.threshold - cal.threshold) > 0.01  # the protocols differ on documents with topics
    with pytest.raises(ValueError, match="needs each row's document"):
        calibrate(acts, 3.0, protocol="documents")
    with pytest.raises(ValueError, match="protocol must be"):
        calibrate(acts, 3.0, protocol="shuffled")
    with pytest.raises(ValueError, match="one document index per row"):
        calibrate(acts, 3.0, doc=doc[:-1])


OFFICIAL = json.loads((Path(__file__).parent / "data" / "official_calibration.json").read_text())


TESTED = [c for c in OFFICIAL if c["case"] != "synthetic large" or (c["docs_per_batch"], c["percentile"]) == (16, 1.0)]


@pytest.mark.parametrize("case", TESTED,
                         ids=lambda c: f"{c['case']}-{c['docs_per_batch']}docs-p{c['percentile']:g}")
def test_theta_equals_the_official_code(case):
    """θ recorded from the official calibration code (benchmarks/official_calibration.py) on the same documents."""
    acts, doc = synthetic_documents(case["case"].split()[-1])
    assert hashlib.sha256(acts.tobytes()).hexdigest()[:16] == case["data_sha256"], "the synthetic data changed"
    cal = calibrate(torch.as_tensor(acts), case["percentile"], doc=doc, docs_per_batch=case["docs_per_batch"])
    assert cal.threshold == pytest.approx(case["official_theta"], abs=2e-6)


def test_protocol_survives_save_and_load(tmp_path):
    acts, doc = synthetic_documents("small")
    cal = calibrate(acts, 2.0, doc=doc, docs_per_batch=8)
    cal.save(tmp_path / "c.safetensors")
    back = Calibration.load(tmp_path / "c.safetensors")
    assert (back.protocol, back.docs_per_batch, back.threshold) == ("documents", 8, cal.threshold)


def test_activation_batch_rows():
    batch = ActivationBatch(torch.arange(8.0).reshape(4, 2), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]),
                            torch.tensor([5, 6, 7, 8]))
    kept = batch.select(batch.doc == 1)
    assert kept.token.tolist() == [7, 8] and kept.acts.tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert batch[1:3].pos.tolist() == [1, 0] and len(batch[torch.tensor([3])]) == 1
    import ep.model.activations

    assert ep.model.activations.ActivationBatch is ActivationBatch is __import__("ep").ActivationBatch
