"""AxBench protocol pieces on synthetic arrays (fast), plus templating and the output mask on the real tokenizer."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ep import exercises
from ep.method import metrics
from ep.method.builder import build_dictionary
from ep.method.calibration import calibrate
from ep.model.activations import ActivationBatch
from ep.model.interventions import diff_in_means
from ep.studies import axbench as ax


def _rows(n_rows=6, per_row=5, d=8, seed=0, output_from=2, prompt_from=None):
    """Synthetic RowActivations: rows of per_row tokens, tokens from `output_from` on are output tokens,
    tokens from `prompt_from` on (default: 1, the first token is the chat prefix) follow the prefix."""
    g = torch.Generator().manual_seed(seed)
    row = torch.arange(n_rows).repeat_interleave(per_row)
    output = (torch.arange(per_row) >= output_from).repeat(n_rows)
    after = (torch.arange(per_row) >= (1 if prompt_from is None else prompt_from)).repeat(n_rows)
    acts = torch.randn(n_rows * per_row, d, generator=g)
    return ax.RowActivations({0: acts}, row, output, torch.zeros_like(row), n_rows, after)


def test_scopes_select_prefix_prompt_and_output_tokens():
    rows = _rows(n_rows=2, per_row=5, output_from=3, prompt_from=1)
    assert rows.keep("row").all()
    assert rows.keep("after_prefix").tolist() == [False, True, True, True, True] * 2
    assert rows.keep("output").tolist() == [False, False, False, True, True] * 2
    assert rows.lengths().tolist() == [4, 4] and rows.lengths("output").tolist() == [2, 2]
    with pytest.raises(ValueError):
        rows.keep("prompt")


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
    both = ax.max_pool(torch.tensor([[2.0, -1.0], [5.0, -3.0], [9.0, 9.0], [9.0, 9.0]]), row, keep, 3)
    assert both.tolist() == [[5.0, -1.0], [2.0, -3.0], [2.0, -3.0]]  # each column's own minimum


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
    assert [metrics.auroc(labels, scores[:, k]) for k in range(6)] == pytest.approx(want, abs=1e-12)
    x = rng.normal(size=22)
    assert metrics.auroc(labels.astype(bool), x) == pytest.approx(roc_auc_score(labels, x), abs=1e-12)
    with pytest.raises(ValueError):
        metrics.auroc(np.ones(4), scores[:4, 0])
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


def _planted(n_rows=60, per_row=6, d=16):
    """Positive rows (odd) hold one token along a planted direction; equal lengths, so length says nothing."""
    g = torch.Generator().manual_seed(1)
    rows = _rows(n_rows, per_row, d, seed=2, output_from=1)
    concept = torch.zeros(d)
    concept[3] = 1.0
    labels = np.arange(n_rows) % 2
    for r in np.flatnonzero(labels):
        rows.acts[0][r * per_row + 2 + int(torch.randint(0, 3, (1,), generator=g))] += 10 * concept
    half = n_rows // 2
    split = ax.ConceptSplit(0, "c", "text", np.arange(half), labels[:half], np.arange(half, n_rows), labels[half:])
    return rows, split  # train and evaluate on different halves of the same table


def _generic_dictionary(d=16, percentile=10.0):
    """A dictionary of label-free synthetic tokens (the generic stream), in which the concept occurs too."""
    g = torch.Generator().manual_seed(5)
    acts = torch.randn(400, d, generator=g)
    acts[::7, 3] += 10.0
    cal = calibrate(acts, percentile, seed=0)
    zeros = torch.zeros(400, dtype=torch.long)
    batch = ActivationBatch(acts, torch.arange(400), zeros, zeros)
    return build_dictionary([batch], cal, progress=False, n_samples=0)


@pytest.mark.parametrize("options", [{}, {"choose": "auroc"}, {"score": "cos"},
                                     {"scope": "output", "train_scope": "output"}])
def test_methods_find_a_planted_concept_direction(options):
    """EP (both bases, a dictionary from other data), DiffMean and the probe must find a planted direction,
    a random direction must not, and length (equal here) must be uninformative: under the paper's protocol
    and under each control."""
    rows, split = _planted()
    res, info = ax.evaluate_layer(rows, rows, 0, [split], dictionaries={"g": _generic_dictionary()}, n_random=2,
                                  progress=False, **options)
    got = res.set_index("method").auroc
    for m in ("ep_g_exemplar", "ep_g_mean", "diffmean"):
        assert got[m] > 0.9, (m, got[m])
    assert got["probe"] > 0.85  # trained on every token of a row, one of which carries the concept
    assert got["length"] == 0.5
    assert got["random"] < 0.9
    assert {"ep_g_exemplar", "ep_g_mean", "diffmean"} <= set(info["seconds"])


def test_rows_dictionary_control_also_finds_it():
    rows, split = _planted()
    res, _ = ax.evaluate_layer(rows, rows, 0, [split], methods=("ep",), progress=False,
                               dictionaries={"rows": ax.rows_dictionary(rows, 0, 10.0)})
    assert (res.auroc > 0.9).all() and len(res) == 2


def test_evaluate_layer_rejects_bad_options():
    rows, split = _planted()
    with pytest.raises(ValueError, match="dictionaries"):
        ax.evaluate_layer(rows, rows, 0, [split], progress=False)
    for bad in ({"scope": "prompt"}, {"choose": "best"}, {"score": "cosine"}, {"train_scope": "all"}):
        with pytest.raises(ValueError):
            ax.evaluate_layer(rows, rows, 0, [split], methods=("length",), progress=False, **bad)
    with pytest.raises(ValueError):
        ax.evaluate_layer(rows, rows, 0, [split], methods=("ep",), dictionaries={"g": _generic_dictionary()},
                          bases=("centroid",), progress=False)


def test_unit_row_sums_and_the_contrast_choice_match_a_token_level_reference():
    """contrast_units from per-row sums = the exercise's reference (mean over positive tokens − mean over
    negative tokens, argmax) computed on the tokens themselves; rows outside the split do not count."""
    rows = _rows(n_rows=9, per_row=7, d=5, seed=3)
    rows.row[rows.row == 8] = 7  # rows of unequal length: means are over tokens, not rows
    units = torch.randn(6, 5, generator=torch.Generator().manual_seed(4))
    fn = lambda a: a.double() @ units.T.double()
    keep = rows.keep("after_prefix")
    sums, counts = ax.unit_row_sums(units, None, rows.acts[0], rows.row, keep, rows.n_rows)
    chunked = ax.row_sums(rows.acts[0], rows.row, keep, rows.n_rows, chunk_size=4)[0] @ units.double().T
    torch.testing.assert_close(chunked, sums)
    assert counts.tolist() == [6] * 7 + [12, 0]
    split = ax.ConceptSplit(0, "c", "text", np.array([0, 2, 7, 1, 3]), np.array([1, 1, 1, 0, 0]),
                            np.arange(0), np.arange(0))
    scores = fn(rows.acts[0]).numpy()
    pos = keep & torch.isin(rows.row, torch.tensor([0, 2, 7]))
    neg = keep & torch.isin(rows.row, torch.tensor([1, 3]))
    [(k, contrast)] = ax.contrast_units(sums, counts, [split])
    assert k == exercises._concept_region(scores[pos.numpy()], scores[neg.numpy()])
    assert contrast == pytest.approx(scores[pos.numpy()].mean(0)[k] - scores[neg.numpy()].mean(0)[k])
    # centred cosines: the sum of every token's own score (rows summed first inside, the same numbers)
    centre = torch.randn(5, generator=torch.Generator().manual_seed(5))
    cos_sums, _ = ax.unit_row_sums(units, centre, rows.acts[0], rows.row, keep, rows.n_rows)
    token_cos = ax.unit_scores(units, centre)(rows.acts[0][keep]).double()
    want = torch.zeros(rows.n_rows, 6, dtype=torch.float64).index_add_(0, rows.row[keep], token_cos)
    torch.testing.assert_close(cos_sums, want, rtol=1e-5, atol=1e-6)  # the reference scores in float32


def test_diffmean_is_the_shared_diff_in_means_and_counts_a_redrawn_row_twice():
    rows, split = _planted()
    keep = rows.keep("after_prefix")
    lab = torch.full((rows.n_rows,), -1)
    lab[split.train_rows] = torch.as_tensor(split.train_labels)
    lab = lab[rows.row]
    want = diff_in_means(rows.acts[0][keep & (lab == 1)], rows.acts[0][keep & (lab == 0)])
    sums = ax.row_sums(rows.acts[0], rows.row, keep, rows.n_rows)
    torch.testing.assert_close(ax.diffmean(*sums, split).direction, want)
    twice = ax.ConceptSplit(0, "c", "text", np.array([1, 1, 3, 0]), np.array([1, 1, 1, 0]), split.eval_rows,
                            split.eval_labels)
    pos, neg = ax.training_tokens(rows, keep, twice)
    assert rows.row[pos].tolist() == [1] * 5 + [1] * 5 + [3] * 5 and rows.row[neg].tolist() == [0] * 5
    assert keep[pos].all() and keep[neg].all()
    want = diff_in_means(rows.acts[0][pos], rows.acts[0][neg])
    torch.testing.assert_close(ax.diffmean(*sums, twice).direction, want)


def test_sae_a_picks_the_feature_that_carries_the_concept():
    rows, split = _planted()
    encode = lambda a: torch.relu(torch.cat([a, -a], dim=1))  # a toy encoder: 2d features
    res, _ = ax.evaluate_layer(rows, rows, 0, [split], methods=("sae",), sae_encode=encode, progress=False,
                               sae_canonical={0: 3})
    got = res.set_index("method")
    assert got.loc["sae_a", "unit"] == 3 and got.loc["sae_a", "auroc"] > 0.9
    assert got.loc["sae", "auroc"] == got.loc["sae_a", "auroc"]


def test_resample_redraws_within_labels_and_seed_spread_has_one_mean_per_redraw():
    rows, split = _planted()
    [again] = ax.resample([split], seed=1)
    for r, lab, r0, lab0 in ((again.train_rows, again.train_labels, split.train_rows, split.train_labels),
                             (again.eval_rows, again.eval_labels, split.eval_rows, split.eval_labels)):
        assert sorted(lab) == sorted(lab0)  # the same number of positives and negatives
        assert set(r[lab == 1]) <= set(r0[lab0 == 1]) and set(r[lab == 0]) <= set(r0[lab0 == 0])
    assert ax.resample([split], 1)[0].eval_rows.tolist() == again.eval_rows.tolist()  # seeded
    [eval_only] = ax.resample([split], seed=1, rows="eval")
    assert eval_only.train_rows.tolist() == split.train_rows.tolist()
    assert eval_only.eval_rows.tolist() == again.eval_rows.tolist()
    with pytest.raises(ValueError):
        ax.resample([split], 1, rows="train")
    spread = ax.seed_spread(rows, rows, 0, [split], n_boot=3, dictionaries={"g": _generic_dictionary()},
                            n_random=1, progress=False)
    assert len(spread) == 3 * 5 and set(spread.method) == {"ep_g_exemplar", "ep_g_mean", "diffmean", "random",
                                                          "length"}
    assert spread.groupby("method").boot.nunique().eq(3).all()
    # redrawing evaluation rows only: the same numbers as rerunning everything on the redrawn splits
    kw = dict(dictionaries={"g": _generic_dictionary()}, n_random=2)
    fast = ax.seed_spread(rows, rows, 0, [split], n_boot=2, seed=7, rows="eval", progress=False, **kw)
    for i in range(2):
        again, _ = ax.evaluate_layer(rows, rows, 0, ax.resample([split], 7 + i, "eval"), progress=False, seed=7,
                                     methods=("ep", "diffmean", "random", "length"), **kw)
        want = ax.summary(again).mean_auroc
        got = fast[fast.boot == i].set_index("method").mean_auroc
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)


def test_linear_detector_centred_score_is_a_cosine():
    acts = torch.randn(5, 4)
    centre, w = torch.randn(4), torch.nn.functional.normalize(torch.randn(4), dim=0)
    got = ax.LinearDetector(w, centre)(acts)
    want = torch.nn.functional.cosine_similarity(acts - centre, w[None], dim=1)
    torch.testing.assert_close(got, want)


class _Tok:  # a tokenizer with a chat template, for the templating logic alone
    bos_token = "<bos>"
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "<bos>" + "".join(f"<{m['role']}>{m['content'].strip()}</{m['role']}>" for m in messages)


def test_template_row_uses_the_chat_template_and_finds_the_prompt_and_output():
    text, p, (a, b) = ax.template_row(_Tok(), " Hi? ", "  Hello there. ")
    assert not text.startswith("<bos>") and text[a:b] == "Hello there."
    assert text[:p] == "<user>" and text[p:].startswith("Hi?")


def test_template_row_without_a_template_writes_gemma_turns():
    class Base(_Tok):
        chat_template = None

    text, p, (a, b) = ax.template_row(Base(), " Hi? ", "  Hello there. ")
    assert text == "<start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\nHello there.<end_of_turn>\n"
    assert text[a:b] == "Hello there." and text[:p] == "<start_of_turn>user\n"


@pytest.mark.model
def test_output_mask_on_the_real_model(gemma):
    model, _ = gemma
    frame = pd.DataFrame({"input": ["What is two plus two?", "Name a colour.", "Hi"],
                          "output": ["Two plus two is four.", "Blue, the colour of the sky, is a colour.", "Hello."]})
    acts = ax.row_activations(model, frame, [1, 3], context_length=64, batch_size=2, progress=False)
    assert set(acts.acts) == {1, 3} and acts.acts[3].shape == (len(acts.row), model.config.hidden_size)
    assert (acts.token != model.tokenizer.bos_token_id).all()
    assert acts.row.tolist() == sorted(acts.row.tolist()) and set(acts.row.tolist()) == {0, 1, 2}  # frame order
    for r, out in enumerate(frame.output):
        ids = acts.token[(acts.row == r) & acts.output].tolist()
        assert model.tokenizer.decode(ids).strip() == out  # the mask covers exactly the output
        prefix = acts.token[(acts.row == r) & ~acts.after_prefix].tolist()  # the chat prefix, BOS dropped
        assert model.tokenizer.decode(prefix) == "<start_of_turn>user\n"
        after = acts.token[(acts.row == r) & acts.keep("after_prefix")].tolist()
        assert model.tokenizer.decode(after).startswith(frame.input[r])
    # a row's activations do not depend on the other rows in its batch (padding)
    alone = ax.row_activations(model, frame.iloc[:1], [3], context_length=64, progress=False)
    torch.testing.assert_close(alone.acts[3], acts.acts[3][acts.row == 0], atol=1e-4, rtol=1e-4)


def test_prefix_dictionaries_are_builds_stopped_at_each_size():
    acts = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(300, dtype=torch.int64)
    batches = [ActivationBatch(acts[s:s + 70], torch.arange(300)[s:s + 70], zeros[s:s + 70], zeros[s:s + 70])
               for s in range(0, 300, 70)]
    cal = calibrate(acts[:100], 10)
    out = ax.prefix_dictionaries(batches, cal, [250, 100, 35, 1000])
    assert sorted(out) == [35, 100, 250]  # 1000: longer than the stream
    for n, d in out.items():
        alone = build_dictionary(batches, cal, max_tokens=n, n_samples=0, progress=False)
        assert int(d.counts.sum()) == n and torch.equal(d.exemplars, alone.exemplars)
        torch.testing.assert_close(d.mean_directions, alone.mean_directions)
