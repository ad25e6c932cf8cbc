"""Generic detection metrics: AUROC of one score, and of many candidate scores at once.

Both follow scikit-learn's definition (ties count one half) and compute it from ranks (Mann-Whitney U,
U / (n+ · n-) = AUROC) rather than by ``roc_auc_score``, whose input checks cost milliseconds a call:
``auroc`` is called thousands of times by a bootstrap, and ``auroc_columns`` is for *choosing* among
thousands of candidates (EP regions, SAE features), every column in one vectorised call.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(labels, scores) -> float:
    """AUROC of scores [n] for labels [n] (1 = positive, 0 = negative): ``roc_auc_score``'s value."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"expected labels [n] and scores [n], got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 1 (positive) or 0 (negative)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return float(auroc_columns(y, s[:, None])[0])


def auroc_columns(labels, scores) -> np.ndarray:
    """AUROC of every column of scores [n, K] for labels [n] → [K]; equal to ``roc_auc_score`` per column.

    From the positives' rank sum, U = R+ − n+(n+ + 1)/2 (Mann-Whitney), AUROC = U / (n+ · n-); tied scores
    share their mean rank, so a tie counts one half."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=0)  # [n, K]
    return (ranks[labels].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
