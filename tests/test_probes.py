"""Tests for ep.studies.probes: tasks from the data loaders, pooling and bags of units, cross-validated probes."""

import numpy as np
import pytest
import torch

import ep
from ep.model.activations import ActivationBatch
from ep.studies import probes as P


def test_one_hot():
    m = P.one_hot(np.array([2, -1, 0, 2]), 4).toarray()
    np.testing.assert_array_equal(m, [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    m = P.one_hot(np.array([2, 2, 1]), 3, rows=np.array([0, 0, 1]), n_rows=2).toarray()
    np.testing.assert_array_equal(m, [[0, 0, 2], [0, 1, 0]])


def _text_acts():
    # 3 texts with 2, 3, 1 tokens; d = 2
    acts = torch.tensor([[1.0, 0], [3, 0], [0, 1], [0, 2], [0, 6], [5, 5]])
    doc = torch.tensor([0, 0, 1, 1, 1, 2])
    return P.TextActivations(ActivationBatch(acts, doc, torch.tensor([1, 2, 1, 2, 3, 1]), torch.zeros(6).long()), 3)


def test_pooling_and_bags():
    t = _text_acts()
    torch.testing.assert_close(t.pooled("mean"), torch.tensor([[2.0, 0], [0, 3], [5, 5]]))
    torch.testing.assert_close(t.pooled("final"), torch.tensor([[3.0, 0], [0, 6], [5, 5]]))
    with pytest.raises(ValueError, match="pooling"):
        t.pooled("max")
    bag = t.bag(np.array([0, 1, 1, 1, -1, 2]), 3).toarray()
    np.testing.assert_allclose(bag, [[0.5, 0.5, 0], [0, 2 / 3, 0], [0, 0, 1]])  # rows: fraction of tokens


def test_compare_probes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 5)) + 4.0 * np.eye(3, 5)[y]  # separable
    n_units = 300
    codes = {
        "label": P.one_hot(y, n_units),  # one unit per class: perfect
        "unique": P.one_hot(np.arange(120), n_units),  # every text its own unit: never seen in training
        "noise": P.one_hot(rng.integers(0, 3, 120), n_units),  # units unrelated to the label
    }
    r = P.probe_accuracies(x, y, codes, folds=4, seed=0)
    assert r["raw"] > 0.95 and r["label"] == 1.0
    assert r["label_seen"] == 1.0 and r["unique_seen"] == 0.0
    assert r["unique"] == pytest.approx(r["majority"])  # intercept only
    assert r["noise"] < 0.6
    assert r["n"] == 120 and r["folds"] == 4


def test_probe_task_validation():
    with pytest.raises(ValueError, match="labels"):
        P.ProbeTask("t", ["a", "b"], np.array([0]), ["x"])
    with pytest.raises(ValueError, match="two classes"):
        P.ProbeTask("t", ["a", "b"], np.array([0, 0]), ["x"])


def test_tasks_from_the_data_loaders():
    t = P.harmful_vs_harmless(12)
    assert len(t) == 24 and t.classes == ["harmless", "harmful"] and np.bincount(t.labels).tolist() == [12, 12]
    assert t.texts[:12] != P.harmful_vs_harmless(12, seed=1).texts[:12]
    t = P.code_vs_prose(10, chars=200)
    assert np.bincount(t.labels).tolist() == [10, 10]
    code = [s for s, label in zip(t.texts, t.labels) if label == 1]
    assert all(len(s) >= 200 for s in code)
    assert len({s for s in code}) == 10
    t = P.language_id(4)
    assert len(t.classes) == 12 and "english" not in t.classes and np.bincount(t.labels).tolist() == [4] * 12
    tasks = P.axbench_concept_tasks(5)
    assert len(tasks) == 10
    assert all(len(x) == 10 and x.classes == ["negative", "positive"] for x in tasks)
    assert tasks[0].name.startswith("axbench 0:")


@pytest.mark.model
def test_text_activations_on_the_model(gemma):
    model, _ = gemma
    texts = ["Hello there.", "A longer sentence about rivers and cities."]
    t = P.text_activations(model, texts, layer=3)
    assert t.n_texts == 2 and set(t.batch.doc.tolist()) == {0, 1}
    assert t.pooled("mean").shape == (2, 640)


# -----------------------------------------------------------------------------
# the paper's protocol


def _dictionary(centre, exemplars, mean_directions) -> ep.Dictionary:
    """A dictionary with these exemplars and mean directions (one member each, no stored contexts)."""
    k = len(exemplars)
    none = {f"{kind}_contexts": -torch.ones(k, 1, 4, dtype=torch.int64) for kind in ("nearest", "farthest")}
    return ep.Dictionary(centre=centre, threshold=0.5, exemplars=exemplars, mean_directions=mean_directions,
                         counts=torch.ones(k, dtype=torch.int64), coherence=torch.ones(k),
                         exemplar_context=torch.zeros(k, 3, dtype=torch.int64), exemplar_index=torch.arange(k),
                         nearest_dist=torch.zeros(k, 1), farthest_dist=torch.zeros(k, 1), **none)


def test_nearest_region_uses_the_chosen_basis():
    centre = torch.tensor([10.0, 10.0])
    d = _dictionary(centre, torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([[0.0, 1], [1, 0]]))  # bases swapped
    acts = centre + torch.tensor([[3.0, 1], [1, 3], [-1, 5]])
    np.testing.assert_array_equal(P.nearest_region(d, acts, "exemplar"), [0, 1, 1])
    np.testing.assert_array_equal(P.nearest_region(d, acts, "mean", batch_size=2), [1, 0, 0])
    with pytest.raises(ValueError, match="basis"):
        P.nearest_region(d, acts, "median")


def test_histogram_is_the_mean_one_hot_of_tokens():
    t = _text_acts()
    h = t.bag(np.array([0, 1, 1, 1, 0, 2]), 3).toarray()
    np.testing.assert_allclose(h, [[0.5, 0.5, 0], [1 / 3, 2 / 3, 0], [0, 0, 1]])
    np.testing.assert_allclose(h.sum(1), 1)


def test_split_is_fixed_stratified_and_disjoint():
    y = np.r_[np.zeros(40, int), np.ones(20, int)]
    train, test = P.split(y, 0.25, seed=3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 60
    assert (y[test] == 0).sum() == 10 and (y[test] == 1).sum() == 5
    np.testing.assert_array_equal(test, P.split(y, 0.25, seed=3)[1])


def test_one_vs_rest_is_balanced_and_labelled():
    y = np.r_[np.zeros(10, int), np.ones(30, int), np.full(5, 2)]
    tasks = P.one_vs_rest(y, ["a", "b", "c"], seed=0)
    assert list(tasks) == ["a", "b", "c"]
    for c, (idx, lab) in zip(range(3), tasks.values()):
        assert len(set(idx.tolist())) == len(idx) and lab.sum() == len(lab) // 2
        assert (y[idx[lab == 1]] == c).all() and (y[idx[lab == 0]] != c).all()
    assert len(tasks["b"][0]) == 30  # 15 of 'b' vs 15 of the other 15
    assert list(P.one_vs_rest(y[y < 2], ["a", "b"])) == ["b"]


def test_top_by_mean_difference():
    x = np.array([[1.0, 0, 5], [1, 0, 0], [0, 1, 5], [0, 1, 0.5]])
    y = np.array([1, 1, 0, 0])
    np.testing.assert_array_equal(P.top_by_mean_difference(x, y, 2), [0, 1])


def test_binary_probes_separate_an_informative_feature_from_noise():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    raw = rng.normal(size=(200, 5)) + 2 * y[:, None]
    informative = np.c_[y, rng.random((200, 9))]  # column 0 is the label
    noise = rng.random((200, 10))
    train, test = P.split(y, 0.25)
    out = P.binary_probes(raw, {"good": informative, "noise": noise}, y, train, test, top_k=(1,))
    assert out["raw"] > 0.9 and out["good"] == 1.0 and out["good top-1"] == 1.0
    assert out["noise"] < 0.75 and abs(out["majority"] - 0.5) < 0.01 and out["test texts"] == len(test)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        P.binary_probes(raw, {}, y * 2, train, test)
    everything = P.binary_probes(raw, {"good": informative}, y, train, test)  # the default top-k: SAEBench's
    fields = {field: everything[column.format("good")] for field, column in P.SAEBENCH_FIELDS.items()}
    assert fields["llm_test_accuracy"] == everything["raw"] and fields["sae_top_1_test_accuracy"] == 1.0


def test_probe_accuracy_is_gridsearchcv_on_the_same_folds():
    """The plain grid loop picks C and scores the test texts exactly as GridSearchCV would."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), np.r_[np.ones(40, int), np.zeros(40, int)]
    x[:, 0] += 0.6 * y  # a weak signal, so C matters
    tr, te = np.arange(0, 80, 2), np.arange(1, 80, 2)
    Cs = (0.01, 0.1, 1.0, 10.0)
    scaler = StandardScaler().fit(x[tr])
    grid = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(Cs)},
                        cv=StratifiedKFold(5, shuffle=True, random_state=3), scoring="accuracy")
    want = (grid.fit(scaler.transform(x[tr]), y[tr]).predict(scaler.transform(x[te])) == y[te]).mean()
    assert P._probe_accuracy(x[tr], y[tr], x[te], y[te], Cs, 5, 3, True) == want
    # one text of a class: a fold trains on one class, its fits fail and score NaN, as in GridSearchCV
    tr = np.r_[np.flatnonzero(y == 1)[:1], np.flatnonzero(y == 0)[:20]]
    scaler = StandardScaler().fit(x[tr])
    grid.set_params(cv=StratifiedKFold(2, shuffle=True, random_state=3))  # folds: at least 2, at most the rarer class
    with pytest.warns(Warning):  # GridSearchCV warns about the failed fits
        grid.fit(scaler.transform(x[tr]), y[tr])
    want = (grid.predict(scaler.transform(x[te])) == y[te]).mean()
    assert P._probe_accuracy(x[tr], y[tr], x[te], y[te], Cs, 5, 3, True) == want
