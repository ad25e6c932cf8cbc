"""AxBench protocol pieces on synthetic arrays (fast), plus templating and the output mask on the real tokenizer."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ep.method import metrics
from ep.studies import axbench as ax


def _rows(n_rows=6, per_row=5, d=8, seed=0, output_from=2):
    """Synthetic RowActivations: rows of per_row tokens, tokens from `output_from` on are output tokens."""
    g = torch.Generator().manual_seed(seed)
    row = torch.arange(n_rows).repeat_interleave(per_row)
    output = (torch.arange(per_row) >= output_from).repeat(n_rows)
    acts = torch.randn(n_rows * per_row, d, generator=g)
    return ax.RowActivations({0: acts}, row, output, torch.zeros_like(row), n_rows)


def test_max_pool_takes_the_max_over_kept_tokens_only():
    rows = _rows(n_rows=3, per_row=4, output_from=2)
    scores = torch.arange(12, dtype=torch.float32)
    scores[[0, 4, 8]] = 100.0  # a huge score on a non-output token must not count
    out = ax.max_pool(scores, rows.row, rows.keep("output"), 3)
    assert out.tolist() == [3.0, 7.0, 11.0]
    assert ax.max_pool(scores, rows.row, rows.keep("row"), 3).tolist() == [100.0, 100.0, 100.0]


def test_max_pool_fills_rows_without_kept_tokens_with_the_minimum():
    row = torch.tensor([0, 0, 1, 1])
    keep = torch.tensor([True, True, False, False])
    out = ax.max_pool(torch.tensor([2.0, 5.0, 9.0, 9.0]), row, keep, 3)
    assert out.tolist() == [5.0, 2.0, 2.0]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_unit_row_scores_equals_max_pool_of_each_unit(chunk):
    rows = _rows(n_rows=5, per_row=6, d=4)
    units = torch.randn(7, 4)
    fn = lambda a: a @ units.T
    keep = rows.keep("output")
    got = ax.unit_row_scores(fn, rows.acts[0], rows.row, keep, rows.n_rows, chunk_size=chunk)
    want = torch.stack([ax.max_pool(rows.acts[0] @ u, rows.row, keep, rows.n_rows) for u in units], 1)
    torch.testing.assert_close(got, want)


def test_auroc_columns_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(9), np.zeros(13)].astype(int)
    scores = rng.integers(0, 4, size=(22, 6)).astype(float)  # many ties
    want = [roc_auc_score(labels, scores[:, k]) for k in range(6)]
    np.testing.assert_allclose(metrics.auroc_columns(labels, scores), want)
    assert metrics.auroc(labels, scores[:, 0]) == pytest.approx(want[0])
    with pytest.raises(ValueError):
        metrics.auroc_columns(np.ones(4), scores[:4])


def _tables():
    train = pd.DataFrame({
        "input": [f"q{i}" for i in range(10)], "output": [f"a{i}" for i in range(10)],
        "category": ["negative"] * 4 + ["positive"] * 6,
        "concept_genre": ["text", "text", "code", "code", "text", "text", "text", "code", "code", "code"],
        "concept_id": [-1] * 4 + [0, 0, 0, 1, 1, 1],
    })
    latent = pd.DataFrame({
        "input": [f"e{i}" for i in range(8)], "output": [f"b{i}" for i in range(8)],
        "category": ["positive", "negative", "hard negative", "positive", "negative", "negative",
                     "hard negative", "positive"],
        "concept_id": [0, 0, 0, 1, 1, 1, 1, 0],
    })
    meta = [{"concept_id": 0, "concept": "c0", "concept_genres_map": {"c0": ["text"]}},
            {"concept_id": 1, "concept": "c1", "concept_genres_map": {"c1": ["code"]}}]
    return meta, train, latent


def test_concept_splits_exclude_hard_negatives_and_pick_negatives_by_genre():
    meta, train, latent = _tables()
    s0, s1 = ax.concept_splits(meta, train, latent, "genre")
    assert list(s0.train_rows) == [0, 1, 4, 5, 6] and list(s0.train_labels) == [0, 0, 1, 1, 1]
    assert list(s1.train_rows) == [2, 3, 7, 8, 9]
    assert list(s0.eval_rows) == [0, 1, 7] and list(s0.eval_labels) == [1, 0, 1]  # row 2 is a hard negative
    assert list(s1.eval_rows) == [3, 4, 5]
    s0_all = ax.concept_splits(meta, train, latent, "all")[0]
    assert list(s0_all.train_rows) == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        ax.concept_splits(meta, train, latent, "some")


def test_subsample_is_stratified_and_keeps_columns():
    meta, train, latent = _tables()
    tr, la = ax.subsample(train, latent, n_train_pos=2, n_train_neg=1, n_eval=1, seed=0)
    assert set(tr.columns) == set(train.columns) and set(la.columns) == set(latent.columns)
    assert (tr[tr.category == "negative"].concept_genre.value_counts() == 1).all()
    assert (tr[tr.category == "positive"].concept_id.value_counts() == 2).all()
    assert (la.groupby(["concept_id", "category"]).size() == 1).all()
    assert "hard negative" not in set(la.category)  # never scored, so never run


def test_best_units_picks_the_best_training_auroc_and_breaks_ties_by_gap():
    split = ax.ConceptSplit(0, "c", "text", np.arange(4), np.array([1, 1, 0, 0]), np.arange(0), np.arange(0))
    scores = torch.tensor([[0.0, 2.0, 5.0, 0.9],
                           [1.0, 3.0, 6.0, 1.0],
                           [2.0, 1.0, 0.0, 0.1],
                           [3.0, 0.0, 1.0, 0.0]])  # columns 1, 2, 3 separate perfectly; 2 by the widest gap
    assert ax.best_units(scores, [split]) == [(2, 1.0)]
    assert ax.best_units(-scores, [split]) == [(0, 1.0)]


def test_methods_find_a_planted_concept_direction():
    """Positive rows hold one token along a planted direction: EP, DiffMean and the probe must find it,
    a random direction must not, and length (equal here) must be uninformative."""
    g = torch.Generator().manual_seed(1)
    n_rows, per_row, d = 60, 6, 16
    rows = _rows(n_rows, per_row, d, seed=2, output_from=1)
    concept = torch.zeros(d)
    concept[3] = 1.0
    labels = np.arange(n_rows) % 2  # odd rows are positive
    acts = rows.acts[0]
    for r in np.flatnonzero(labels):
        acts[r * per_row + 2 + int(torch.randint(0, 3, (1,), generator=g))] += 10 * concept
    half = n_rows // 2
    split = ax.ConceptSplit(0, "c", "text", np.arange(half), labels[:half], np.arange(half, n_rows), labels[half:])
    # train and evaluate on different halves of the same table
    res, info = ax.evaluate_layer(rows, rows, 0, [split], percentiles=(10.0,), n_random=2, progress=False)
    got = res.set_index("method").auroc
    for m in ("ep_p10_cos", "diffmean", "probe"):
        assert got[m] > 0.9, (m, got[m])
    assert got["length"] == 0.5
    assert got["random"] < 0.9
    assert len(info["dictionaries"][10.0]) > 1 and "ep_p10_cos" in info["seconds"]


def test_linear_detector_centred_score_is_a_cosine():
    acts = torch.randn(5, 4)
    centre, w = torch.randn(4), torch.nn.functional.normalize(torch.randn(4), dim=0)
    got = ax.LinearDetector(w, centre)(acts)
    want = torch.nn.functional.cosine_similarity(acts - centre, w[None], dim=1)
    torch.testing.assert_close(got, want)


def test_feature_detector_reads_one_column_in_chunks():
    enc = lambda a: torch.cat([a, -a], dim=1)
    acts = torch.randn(10, 3)
    torch.testing.assert_close(ax.FeatureDetector(enc, 4, chunk_size=3)(acts), -acts[:, 1])


class _Tok:  # a tokenizer with a chat template, for the templating logic alone
    bos_token = "<bos>"
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize=False):
        return "<bos>" + "".join(f"<{m['role']}>{m['content'].strip()}</{m['role']}>" for m in messages)


def test_template_row_uses_the_chat_template_and_finds_the_output():
    text, (a, b) = ax.template_row(_Tok(), "Hi?", "  Hello there. ")
    assert not text.startswith("<bos>") and text[a:b] == "Hello there."


def test_template_row_without_a_template_writes_gemma_turns():
    class Base(_Tok):
        chat_template = None

    text, (a, b) = ax.template_row(Base(), " Hi? ", "  Hello there. ")
    assert text == "<start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\nHello there.<end_of_turn>\n"
    assert text[a:b] == "Hello there."


@pytest.mark.model
def test_output_mask_on_the_real_model(gemma):
    model, _ = gemma
    frame = pd.DataFrame({"input": ["What is two plus two?", "Name a colour.", "Hi"],
                          "output": ["Two plus two is four.", "Blue, the colour of the sky, is a colour.", "Hello."]})
    acts = ax.row_activations(model, frame, [1, 3], context_length=64, batch_size=2, progress=False)
    assert set(acts.acts) == {1, 3} and acts.acts[3].shape == (len(acts.row), model._module.config.hidden_size)
    assert (acts.token != model.tokenizer.bos_token_id).all()
    assert acts.row.tolist() == sorted(acts.row.tolist()) and set(acts.row.tolist()) == {0, 1, 2}  # frame order
    for r, out in enumerate(frame.output):
        ids = acts.token[(acts.row == r) & acts.output].tolist()
        assert model.tokenizer.decode(ids).strip() == out  # the mask covers exactly the output
    # a row's activations do not depend on the other rows in its batch (padding)
    alone = ax.row_activations(model, frame.iloc[:1], [3], context_length=64, progress=False)
    torch.testing.assert_close(alone.acts[3], acts.acts[3][acts.row == 0], atol=1e-4, rtol=1e-4)
