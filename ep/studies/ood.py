"""Out-of-distribution scores: nearest-exemplar distance (free with a dictionary) and Mahalanobis.

A dictionary built on one distribution covers it with exemplars about θ apart, so a token from the
same distribution usually has an exemplar within ~θ; a token from elsewhere tends to be farther from
all of them. That distance costs one matrix product and no extra fitting. The classical baseline is the
Mahalanobis distance to a reference sample (Lee et al., 2018), with a Ledoit-Wolf shrunk covariance.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_curve

from ..method import metrics


def nearest_exemplar_distance(dictionary, acts) -> np.ndarray:
    """[N] cosine distance (centred space) from each activation to its nearest exemplar."""
    return dictionary.assign(acts)[1]


class Mahalanobis:
    """Mahalanobis distance to a reference sample of activations [N, d]."""

    def __init__(self, reference):
        self.model = LedoitWolf().fit(_numpy(reference))

    def __call__(self, acts) -> np.ndarray:
        return np.sqrt(self.model.mahalanobis(_numpy(acts)))  # [N]


def in_vs_out_auroc(in_scores, out_scores) -> float:
    """AUROC of telling ``out`` from ``in`` by a score that should be larger out of distribution."""
    return metrics.auroc(np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))], np.r_[in_scores, out_scores])


def roc(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of the same task, for plotting."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    fpr, tpr, _ = roc_curve(labels, np.r_[in_scores, out_scores])
    return fpr, tpr


def per_document(scores: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """Mean token score of each document (in order of document index)."""
    doc = np.asarray(doc)
    _, inverse = np.unique(doc, return_inverse=True)
    return np.bincount(inverse, weights=scores) / np.bincount(inverse)


def _numpy(x) -> np.ndarray:
    return x.double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
