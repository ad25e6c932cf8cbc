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
