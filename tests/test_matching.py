"""Tests for ep.studies.matching: Hungarian matching of dictionaries, membership agreement, layer ladder."""

import itertools

import numpy as np
import pytest
import torch

from ep.method.builder import build_dictionary
from ep.method.calibration import Calibration
from ep.method.dictionary import _SPEC, Dictionary
from ep.model.activations import ActivationBatch as Batch
from ep.studies.matching import (
    direction_shift,
    exemplar_cosine,
    layer_ladder,
    match_dictionaries,
    membership,
    random_pairs,
    same_stream_token,
)

D = 32
DIRS = np.random.default_rng(123).normal(size=(15, D))  # 15 cluster directions, nearly orthogonal in 32-d


def _acts(clusters, n=600, seed=0):
    """Tokens from the given clusters: [n, D] activations and their cluster labels."""
    g = np.random.default_rng(seed)
    labels = np.asarray(clusters)[g.integers(0, len(clusters), n)]
    acts = 10 * DIRS[labels] / np.linalg.norm(DIRS[labels], axis=1, keepdims=True) + 0.3 * g.normal(size=(n, D))
    return torch.tensor(acts, dtype=torch.float32), labels


CAL = Calibration(centre=torch.zeros(D), threshold=0.3, percentile=1.0, n_tokens=0)


def _build(clusters, seed=0):
    acts, _ = _acts(clusters, seed=seed)
    i = torch.arange(len(acts))
    return build_dictionary([Batch(acts, i // 20, i % 20, i % 7)], CAL, n_samples=2, progress=False)


def _cluster_of(d):
    """The cluster each region's exemplar points at."""
    return (d.exemplars.double().numpy() @ DIRS.T).argmax(1)


def _permuted(d, perm):
    """A copy of d with region j of the copy = region perm[j] of d."""
    arrays = {k: getattr(d, k)[torch.as_tensor(perm)] for k in _SPEC if k != "centre"}  # the per-region arrays
    return Dictionary(centre=d.centre, threshold=d.threshold, meta=d.meta, **arrays)


def _from_exemplars(ex, threshold=0.3):
    """A minimal dictionary with the given exemplars (one member each)."""
    ex = torch.as_tensor(np.asarray(ex), dtype=torch.float32)
    ex = ex / ex.norm(dim=1, keepdim=True)
    k = len(ex)
    return Dictionary(centre=torch.zeros(ex.shape[1]), threshold=threshold, exemplars=ex,
                      counts=torch.ones(k, dtype=torch.int64), mean_directions=ex.clone(), coherence=torch.ones(k),
                      exemplar_context=torch.zeros(k, 3, dtype=torch.int64), exemplar_index=torch.arange(k),
                      nearest_contexts=-torch.ones(k, 1, 4, dtype=torch.int64), nearest_dist=torch.full((k, 1), np.nan),
                      farthest_contexts=-torch.ones(k, 1, 4, dtype=torch.int64),
                      farthest_dist=torch.full((k, 1), np.nan))


@pytest.fixture(scope="module")
def base():
    d = _build(range(10))
    assert sorted(_cluster_of(d)) == list(range(10)), "the toy data should give one region per cluster"
    return d


def test_self_match_persists_everything_with_f1_one(base):
    m = match_dictionaries(base, base)
    s = m.summary()
    assert s["persisted"] == len(base) and s["dropped"] == s["introduced"] == 0
    assert np.array_equal(m.a_ids, m.b_ids) and np.allclose(m.cosine, 1.0)
    assert np.allclose(m.distance_theta, 0.0, atol=1e-6) and same_stream_token(m, base, base).all()
    held_out, _ = _acts(range(10), seed=5)
    ids = base.assign(held_out)[0]
    agree = membership(*m.pairs, ids, ids)
    assert np.allclose(agree.f1, 1.0) and np.allclose(agree.jaccard, 1.0)


def test_permuted_copy_maps_ids_through_the_permutation(base):
    perm = np.random.default_rng(0).permutation(len(base))
    copy = _permuted(base, perm)
    m = match_dictionaries(base, copy)
    assert m.persisted.all()
    assert np.array_equal(perm[m.b_ids], m.a_ids)  # the partner of region i is the copy's region holding i
    held_out, _ = _acts(range(10), seed=5)
    ids_a, ids_b = base.assign(held_out)[0], copy.assign(held_out)[0]
    assert np.allclose(membership(*m.pairs, ids_a, ids_b).f1, 1.0)
    # the classic slip, using a's ids for both sides, must show up as disagreement
    assert np.nanmean(membership(m.a_ids, m.a_ids, ids_a, ids_b).f1) < 0.5
    assert np.array_equal(m.partner(len(base))[m.a_ids], m.b_ids)


def test_dropped_and_introduced_regions(base):
    other = _build(range(5, 15), seed=1)
    m = match_dictionaries(base, other, min_cosine=0.7)
    s = m.summary()
    assert (s["persisted"], s["dropped"], s["introduced"]) == (5, 5, 5)
    assert s["persisted_fraction"] == 0.5 and s["introduced_fraction"] == 0.5 and s["f1"] == 0.5
    assert sorted(_cluster_of(base)[m.dropped]) == [0, 1, 2, 3, 4]
    assert sorted(_cluster_of(other)[m.introduced]) == [10, 11, 12, 13, 14]
    a, b = m.pairs
    assert np.array_equal(_cluster_of(base)[a], _cluster_of(other)[b])
    # membership on tokens of the shared clusters: the persisted pairs hold the same tokens
    shared, _ = _acts(range(5, 10), seed=7)
    assert np.allclose(membership(a, b, base.assign(shared)[0], other.assign(shared)[0]).f1, 1.0)


def test_membership_by_hand():
    ids_a = np.array([0, 0, 1, 1, 2])
    ids_b = np.array([3, 1, 1, 1, 0])
    agree = membership(np.array([0, 1, 2, 5]), np.array([3, 1, 0, 5]), ids_a, ids_b)
    assert agree.both.tolist() == [1, 2, 1, 0] and agree.size_a.tolist() == [2, 2, 1, 0]
    np.testing.assert_allclose(agree.f1[:3], [2 / 3, 4 / 5, 1.0])
    np.testing.assert_allclose(agree.jaccard[:3], [1 / 2, 2 / 3, 1.0])
    assert np.isnan(agree.f1[3]) and np.isnan(agree.jaccard[3])  # neither region holds a token
    with pytest.raises(ValueError, match="one token stream"):
        membership(np.array([0]), np.array([0]), ids_a, ids_b[:3])


def test_min_cosine_and_distances_in_theta():
    e = np.eye(4)
    a = _from_exemplars(e[:2], threshold=0.2)
    b = _from_exemplars([0.75 * e[0] + np.sqrt(1 - 0.75**2) * e[2], 0.65 * e[1] + np.sqrt(1 - 0.65**2) * e[3]])
    m = match_dictionaries(a, b, min_cosine=0.7)
    np.testing.assert_allclose(m.cosine, [0.75, 0.65], atol=1e-6)
    np.testing.assert_allclose(m.distance_theta, [0.25 / 0.2, 0.35 / 0.2], atol=1e-5)
    assert m.persisted.tolist() == [True, False]
    assert m.dropped.tolist() == [1] and m.introduced.tolist() == [1]
    assert match_dictionaries(a, b, min_cosine=0.6).summary()["persisted"] == 2
    with pytest.raises(ValueError):
        match_dictionaries(a, b, min_cosine=1.5)
    with pytest.raises(ValueError, match="widths"):
        exemplar_cosine(a, _from_exemplars(np.eye(3)))


@pytest.mark.parametrize("k_a,k_b", [(5, 5), (4, 6), (6, 3)])
def test_hungarian_is_one_to_one_and_optimal(k_a, k_b):
    g = np.random.default_rng(k_a * 10 + k_b)
    a, b = _from_exemplars(g.normal(size=(k_a, 6))), _from_exemplars(g.normal(size=(k_b, 6)))
    m = match_dictionaries(a, b, min_cosine=-1.0)
    assert len(m.a_ids) == min(k_a, k_b) and len(set(m.a_ids)) == len(set(m.b_ids)) == len(m.a_ids)
    cos = exemplar_cosine(a, b)
    best = max(sum(cos[i, j] for i, j in zip(rows, cols))
               for rows in itertools.combinations(range(k_a), min(k_a, k_b))
               for cols in itertools.permutations(range(k_b), min(k_a, k_b)))
    assert m.cosine.sum() == pytest.approx(best)
    s = m.summary()
    assert s["persisted"] == min(k_a, k_b) and s["introduced"] == k_b - s["persisted"]


def test_min_members_restricts_the_regions():
    a = _from_exemplars(np.eye(3))
    a.counts[:] = torch.tensor([5, 1, 3])
    m = match_dictionaries(a, a, min_members=2)
    assert m.a_regions.tolist() == [0, 2] and m.summary()["persisted"] == 2


def test_layer_ladder_adjacent_agree_more_than_distant():
    g = np.random.default_rng(0)
    ex, layers = g.normal(size=(40, 16)), []
    for _ in range(5):  # a random walk: each "layer" drifts a little further from the first
        layers.append(_from_exemplars(ex))
        ex = ex + 0.45 * g.normal(size=ex.shape)
    ladder = layer_ladder(layers, min_cosine=0.7)
    assert np.allclose(ladder, ladder.T) and np.allclose(np.diag(ladder), 1.0)
    adjacent = np.mean([ladder[i, i + 1] for i in range(4)])
    assert adjacent > ladder[0, 4] + 0.2


def test_direction_shift_and_random_pairs(base):
    acts, _ = _acts(range(10), seed=3)
    assert np.allclose(direction_shift(acts, acts, base, base), 0.0, atol=1e-5)
    assert (direction_shift(acts, -acts, base, base) == pytest.approx(2 / base.threshold, rel=1e-5))
    m = match_dictionaries(base, base)
    a, b = random_pairs(m, seed=0)
    assert np.array_equal(a, m.pairs[0]) and np.isin(b, m.b_regions).all()
