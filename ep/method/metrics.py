"""Generic detection metrics: AUROC of one score, and of many candidate scores at once.

Both follow scikit-learn's definition (ties count one half). ``auroc_columns`` is for *choosing*
among thousands of candidates (EP regions, SAE features): it ranks every column in one vectorised
call (scipy's Mann-Whitney U, U / (n+ · n-) = AUROC) instead of a Python loop of ``roc_auc_score``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score


def auroc(labels, scores) -> float:
    """AUROC of scores [n] for labels [n] (1 = positive, 0 = negative), by scikit-learn."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def auroc_columns(labels, scores) -> np.ndarray:
    """AUROC of every column of scores [n, K] for labels [n] → [K]; equal to ``roc_auc_score`` per column."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("AUROC needs at least one positive and one negative")
    u = mannwhitneyu(np.asarray(scores)[labels], np.asarray(scores)[~labels], axis=0, method="asymptotic").statistic
    return u / (labels.sum() * (~labels).sum())
