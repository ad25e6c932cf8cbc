"""Tests for ep.studies.compare: top-token sets, set F1, best and one-to-one matches, compute counts."""

import itertools

import numpy as np
import pytest
import torch

import ep
from ep.studies import compare as C


def test_top_tokens_matches_a_full_sort():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(230, 5, generator=g)
    w = torch.randn(5, 7, generator=g)
    got = C.top_tokens(lambda a: a @ w, x, n=10, batch_size=32)  # several row chunks
    expect = torch.argsort(x @ w, dim=0, descending=True)[:10].T.numpy()
    assert got.shape == (7, 10)
    np.testing.assert_array_equal(got, expect)


def test_top_tokens_positive_only_pads():
    scores = torch.tensor([[1.0, -1.0], [3.0, -2.0], [0.0, 5.0], [2.0, -3.0]])  # [rows, units]
    got = C.top_tokens(lambda a: a, scores, n=3, batch_size=2, positive_only=True)
    np.testing.assert_array_equal(got, [[1, 3, 0], [2, -1, -1]])
    # more rows asked for than exist: padded with -1 even without positive_only
    got = C.top_tokens(lambda a: a, scores, n=6)
    assert got.shape == (2, 6) and (got[:, 4:] == -1).all() and (got[:, :4] >= 0).all()


def _brute_f1(a_sets, b_sets):
    out = np.zeros((len(a_sets), len(b_sets)))
    for i, a in enumerate(a_sets):
        for j, b in enumerate(b_sets):
            a_, b_ = set(a[a >= 0].tolist()), set(b[b >= 0].tolist())
            if a_ and b_:
                p, r = len(a_ & b_) / len(b_), len(a_ & b_) / len(a_)
                out[i, j] = 0 if p + r == 0 else 2 * p * r / (p + r)
    return out


def test_set_f1_is_the_f1_of_the_sets():
    rng = np.random.default_rng(0)
    a = np.stack([rng.choice(40, 8, replace=False) for _ in range(6)])
    b = np.stack([rng.choice(40, 8, replace=False) for _ in range(9)])
    b[2, 5:] = -1  # a feature that fired on only 5 tokens
    b[3] = -1  # a dead feature
    b[4] = a[1]  # an exact match
    f1 = C.set_f1(a, b)
    np.testing.assert_allclose(f1.toarray(), _brute_f1(a, b))
    assert f1[1, 4] == pytest.approx(1.0)


def test_best_match_and_hungarian():
    dense = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.3]])
    import scipy.sparse as sp

    f1 = sp.csr_matrix(dense)
    col, best = C.best_match(f1)
    np.testing.assert_array_equal(col, [0, 0, -1, 2])
    np.testing.assert_allclose(best, [0.9, 0.85, 0.0, 0.3])
    rows, cols, score = C.hungarian(f1)
    assert len(set(cols.tolist())) == len(cols)  # one-to-one
    brute = max(sum(dense[r, c] for r, c in zip(perm, range(3))) for perm in itertools.permutations(range(4), 3))
    assert score.sum() == pytest.approx(brute)  # 0.8 + 0.85 + 0.3
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0, 3: 2}
    summary = C.match_summary(f1, min_f1=0.5)
    assert summary["min_f1"] == 0.5  # the result's key is the parameter's name
    assert summary["matched_fraction"] == pytest.approx(0.5)  # rows 0 and 1
    assert summary["features_used_by_best_matches"] == 1
    assert summary["hungarian_mean_f1"] == pytest.approx(brute / 3)
    assert summary["hungarian_matched_fraction"] == pytest.approx(2 / 4)


def test_hungarian_with_no_overlap():
    import scipy.sparse as sp

    rows, cols, score = C.hungarian(sp.csr_matrix((3, 4)))
    assert len(rows) == len(cols) == len(score) == 0


@pytest.fixture(scope="module")
def dictionary():
    g = np.random.default_rng(0)
    acts = (3.0 * g.normal(size=(10, 8))[g.integers(0, 10, 600)] + g.normal(size=(600, 8)) + 4.0).astype(np.float32)
    cal = ep.calibrate(acts[:200], 5.0)
    batch = ep.ActivationBatch(torch.from_numpy(acts[200:]), *(torch.arange(400),) * 3)
    return ep.build_dictionary([batch], cal, progress=False), acts[200:]


def test_ep_scorer_is_the_signed_projection(dictionary):
    d, acts = dictionary
    x = torch.from_numpy(acts[:20])
    expect = (x - d.centre) @ d.exemplars.T
    torch.testing.assert_close(C.ep_scorer(d)(x), expect)
    # direction only: invariant to stretching a token away from the centre
    direction = C.direction_only(C.ep_scorer(d), d.centre)
    stretched = d.centre + 3.0 * (x - d.centre)
    torch.testing.assert_close(direction(stretched), direction(x))
    torch.testing.assert_close(direction(x), d.directions(x) @ d.exemplars.T)


def test_ep_build_flops_counts_comparisons(dictionary):
    d, _ = dictionary
    n, born = int(d.counts.sum()), set(d.exemplar_index.tolist())
    pairs, k = 0, 0
    for t in range(n):  # the sequential algorithm: token t meets the k exemplars born before it
        pairs += k
        k += t in born
    assert k == len(d)
    assert C.ep_build_flops(d, calibration_tokens=0) == pytest.approx(2 * d.dim * pairs)
    assert C.ep_build_flops(d, 200) - C.ep_build_flops(d, 0) == pytest.approx(2 * d.dim * 200 * 200)


class FakeContexts:
    def html(self, doc, pos, window=10):
        return f"[{doc}:{pos}]"


def test_pair_html_marks_shared_tokens():
    doc, pos = np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2])
    card = C.pair_html(FakeContexts(), doc, pos, 7, np.array([0, 2, 3]), 11, np.array([2, -1, -1]), 0.5, n=2)
    assert "region 7" in card and "feature 11" in card and "0.50" in card
    assert "● [1:1]" in card and "[0:1]" in card and "[1:2]" not in card  # n = 2 per side
    card = C.pair_html(FakeContexts(), doc, pos, 3, np.array([0]), -1, np.array([-1]), 0.0)
    assert "feature none" in card and "fires on no held-out token" in card


def test_paper_match_follows_the_official_rules():
    # 60 rows; units are one-hot "which rows fire" scorers (score = indicator), so top sets are known
    n_rows = 60
    def scorer(sets):
        m = torch.zeros(len(sets), n_rows)
        for u, rows in enumerate(sets):
            m[u, rows] = 1.0 + torch.arange(len(rows), dtype=torch.float32) / 100
        return lambda x: m[:, x[:, 0].long()].T
    acts = torch.arange(n_rows, dtype=torch.float32)[:, None]
    regions = [list(range(0, 30)), list(range(30, 55)), list(range(0, 10))]   # region 2: < 20 positives
    features = [list(range(0, 24)), list(range(10, 40)), list(range(40, 50))]  # feature 2: < 20 positives
    out = C.paper_match(scorer(regions), scorer(features), acts, n=100, min_active=20, min_f1=0.5)
    assert out["eligible_regions"] == 2 and out["eligible_features"] == 2
    # region 0 (30 rows): overlap 24 with f0, 20 with f1 -> f0 by overlap; F1 = 48 / 54
    # region 1 (25 rows): overlap 10 with f1 (f2 is ineligible) -> F1 = 20 / 55
    np.testing.assert_array_equal(out["best_feature"], [0, 1, -1])
    np.testing.assert_allclose(out["best_f1"], [48 / 54, 20 / 55, 0])
    assert out["regions_with_overlap"] == 2 and out["matched_fraction"] == 0.5
    # SAE→EP, the same rules: feature 0 (24 rows) overlaps region 0 by 24 -> F1 48 / 54; feature 1 (30 rows)
    # overlaps region 0 by 20 and region 1 by 10 -> region 0, F1 40 / 60; feature 2 is ineligible
    back = out["sae_to_ep"]
    np.testing.assert_array_equal(back["best_region"], [0, 0, -1])
    np.testing.assert_allclose(back["best_f1"], [48 / 54, 40 / 60, 0])
    assert back["features_with_overlap"] == 2 and back["matched_fraction"] == 1.0


def test_top1_coherence_counts_distinct_top_features():
    acts = torch.arange(6, dtype=torch.float32)[:, None]
    sae = lambda x: torch.nn.functional.one_hot(x[:, 0].long() % 3, 3).float()  # row r peaks on feature r % 3
    region_sets = np.array([[0, 3, -1], [0, 1, 2], [1, 4, 5]])  # region 0: two positive tokens only
    out = C.top1_coherence(region_sets, sae, acts, k=3)
    assert out["n_evaluated"] == 2 and out["n_regions"] == 3
    assert out["histogram"] == {1: 0, 2: 1, 3: 1} and out["frac_all_same"] == 0.0 and out["mean_distinct"] == 2.5
    same = C.top1_coherence(region_sets, sae, acts, k=2)
    assert same["n_evaluated"] == 3 and same["histogram"] == {1: 2, 2: 1} and same["frac_all_same"] == 2 / 3


def test_paper_match_drops_regions_without_overlap_and_ep_scorer_bases():
    acts = torch.tensor([[1.0, 0], [2, 0], [0, 1], [0, 3]])
    a = C.paper_match(lambda x: x[:, :1], lambda x: x[:, 1:], acts, n=2, min_active=1)
    assert a["regions_with_overlap"] == 0 and a["matched_fraction"] == 0.0
    k = 2
    d = ep.Dictionary(centre=torch.zeros(2), threshold=0.5, exemplars=torch.eye(2),
                      counts=torch.ones(k, dtype=torch.int64), mean_directions=torch.eye(2)[[1, 0]],
                      coherence=torch.ones(k),
                      exemplar_context=torch.zeros(k, 3, dtype=torch.int64), exemplar_index=torch.arange(k),
                      nearest_contexts=-torch.ones(k, 1, 4, dtype=torch.int64), nearest_dist=torch.full((k, 1), 0.0),
                      farthest_contexts=-torch.ones(k, 1, 4, dtype=torch.int64), farthest_dist=torch.full((k, 1), 0.0))
    torch.testing.assert_close(C.ep_scorer(d, "mean")(acts), acts[:, [1, 0]])
    torch.testing.assert_close(C.ep_scorer(d)(acts), acts)
    with pytest.raises(ValueError, match="basis"):
        C.ep_scorer(d, "median")
