import numpy as np
import pytest

from ep.studies import ood


def test_auroc_and_roc():
    assert ood.in_vs_out_auroc([0, 1, 2], [3, 4]) == 1.0
    assert ood.in_vs_out_auroc([3, 4], [0, 1, 2]) == 0.0
    fpr, tpr = ood.roc([0, 1], [2, 3])
    assert fpr[0] == 0 and tpr[-1] == 1


def test_per_document_means():
    scores = np.array([1.0, 3.0, 10.0, 5.0])
    assert ood.per_document(scores, np.array([7, 7, 9, 2])).tolist() == [5.0, 2.0, 10.0]


def test_mahalanobis_is_larger_away_from_the_reference():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(500, 8))
    score = ood.Mahalanobis(reference)
    near, far = score(rng.normal(size=(50, 8))), score(rng.normal(loc=4.0, size=(50, 8)))
    assert near.shape == (50,) and far.min() > np.median(near)
    assert score(reference.mean(0, keepdims=True))[0] == pytest.approx(0.0, abs=0.2)


def test_coverage_stats_follow_the_official_fields():
    stats = ood.coverage_stats([0.1, 0.2, 0.3, 0.9], threshold=0.25)
    assert stats["within_threshold_rate"] == 0.5 and stats["n"] == 4 and stats["threshold"] == 0.25
    assert stats["mean_distance"] == pytest.approx(0.375) and stats["median_distance"] == pytest.approx(0.25)
    assert stats["p90_distance"] <= stats["p99_distance"] <= 0.9


def test_coverage_table_reads_each_dictionary_against_its_own_threshold():
    import torch

    import ep

    acts = torch.as_tensor(np.random.default_rng(0).normal(size=(400, 6)), dtype=torch.float32)
    zeros = torch.zeros(400, dtype=torch.int64)
    dictionary = ep.build_dictionary([ep.ActivationBatch(acts, zeros, torch.arange(400), zeros)],
                                     ep.calibrate(acts[:200], 5), progress=False)
    table = ood.coverage_table({"p5": dictionary}, {"built on": acts, "far": acts + 50.0})
    assert list(table["set"]) == ["built on", "far"] and (table["regions"] == len(dictionary)).all()
    built = table.set_index("set").loc["built on"]
    assert built.within_threshold_rate == 1.0  # every streamed row is within θ of an exemplar, by construction
    assert built.threshold == pytest.approx(dictionary.threshold)


@pytest.mark.model
def test_random_token_activations_skip_the_first_position(gemma):
    model, info = gemma
    batch = ood.random_token_activations(model, 3, n_tokens=20, context_length=8, batch_size=2, seed=1)
    assert batch.acts.shape == (20, info.d_model) and (batch.pos >= 1).all()
    special = {model.tokenizer.bos_token_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id}
    assert not set(batch.token.tolist()) & special
    again = ood.random_token_activations(model, 3, n_tokens=20, context_length=8, batch_size=2, seed=1)
    assert (again.token == batch.token).all()
