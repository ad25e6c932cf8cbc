"""Match EP regions to SAE features by the tokens they pick out, and account for build compute.

Two dictionaries of the same activation space are compared through their *top activating tokens* on
a held-out token set:
- an EP region k scores a token x by the signed projection (x - c)·e_k (c the centre, e_k the unit
  exemplar), so every region has a full top-n list;
- an SAE feature scores x by its activation; only tokens where it fires (> 0) count, so a rarely
  firing feature has a shorter list (and a dead one an empty list).
For a region set A and a feature set B, precision |A∩B|/|B| and recall |A∩B|/|A| give
F1 = 2|A∩B| / (|A| + |B|) (for two sets the F1 score of one against the other is their Dice coefficient, the
same number; this package calls it F1 everywhere). Two readings:
- **best match**: each region's best feature by F1 (many regions may pick the same feature); the
  fraction of regions with F1 > 0.5 is the "shared core";
- **one-to-one**: the Hungarian assignment (scipy) maximising total F1, each feature used once.
Sets are sparse (n of N tokens), so all K x F intersections come from one sparse product.

**The paper's protocol** (official ``scripts/compare_sae.py``; :func:`paper_match`): both sides rank
tokens among their *positive* scores only (EP: the signed projection on the region's mean-member
direction by default); a unit is eligible with >= 20 positive tokens; an EP region's best SAE feature
is the eligible one with the largest *overlap* |A∩B| (not the largest F1); F1 = 2|A∩B| / (|A| + |B|)
of that pair; regions whose best overlap is zero leave the denominator; the headline is the fraction
of the remaining regions with F1 > 0.5. The same script reads the other direction with the same machinery
(each eligible SAE feature's best region: ``sae_to_ep``), and runs both bases (exemplar and mean member).
:func:`top1_coherence` is its ``_top1_coherence``: do a region's top-5 tokens share their most active SAE
feature? :func:`set_f1` / :func:`match_summary` are this module's own reading (every region counted, best by
F1, a Hungarian one-to-one view), kept as a comparison.

Compute: EP's build cost is its comparisons, 2·d FLOPs per (token, existing exemplar) pair, which the
dictionary lets us count exactly (each exemplar's stream index says how many tokens it was compared
with), plus the calibration's pairwise distances; the SAE's is ``ep.studies.sae.sae_flops``.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment

from ..show.display import card_html


def ep_scorer(dictionary, basis: str = "exemplar") -> Callable[[torch.Tensor], torch.Tensor]:
    """acts [n, d] → signed projections (x - c)·e [n, K] for every region of an EP dictionary, e the unit
    exemplar ("exemplar") or the unit mean-member direction ("mean", the official comparison's default)."""
    directions = dictionary.basis(basis).float()  # [K, d]
    centre = dictionary.centre.float()  # [d]
    return lambda x: (x.float() - centre) @ directions.T


def direction_only(score: Callable[[torch.Tensor], torch.Tensor], centre) -> Callable[[torch.Tensor], torch.Tensor]:
    """A scorer divided by each token's centred norm ||x - c||: ranks tokens by direction, not size.

    A control: the signed projection (and an SAE activation) grows with the token's norm, so the
    highest-norm tokens can top many units' lists at once.
    """
    c = torch.as_tensor(centre).float()
    return lambda x: score(x) / (x.float() - c).norm(dim=1, keepdim=True).clamp_min(1e-12)


def top_tokens(score: Callable[[torch.Tensor], torch.Tensor], acts, n: int = 100, batch_size: int = 1024,
               positive_only: bool = False) -> np.ndarray:
    """The n highest-scoring rows of acts [N, d] for every unit of ``score`` ([b, d] → [b, F]).

    Returns [F, n] int64 row indices, best first, -1 where a unit has fewer than n rows (only when
    ``positive_only``: rows scoring <= 0 are left out). Streams over rows keeping a running top-n.
    """
    x = torch.as_tensor(acts)
    best_val = best_idx = None  # [m, F], m <= n
    for s in range(0, x.shape[0], batch_size):
        val = score(x[s:s + batch_size]).float()  # [b, F]
        idx = torch.arange(s, s + val.shape[0])[:, None].expand_as(val)
        if best_val is not None:
            val, idx = torch.cat([best_val, val]), torch.cat([best_idx, idx])
        top = val.topk(min(n, val.shape[0]), dim=0)  # over rows
        best_val, best_idx = top.values, idx.gather(0, top.indices)
    if best_val is None:
        raise ValueError("no rows to score")
    if positive_only:
        best_idx = torch.where(best_val > 0, best_idx, -1)
    out = np.full((best_idx.shape[1], n), -1, dtype=np.int64)
    out[:, :best_idx.shape[0]] = best_idx.T.numpy()
    return out


def positive_counts(score: Callable[[torch.Tensor], torch.Tensor], acts, batch_size: int = 1024) -> np.ndarray:
    """[F] int64: how many rows of acts each unit of ``score`` scores above 0 (its eligibility)."""
    x = torch.as_tensor(acts)
    counts = None
    for s in range(0, x.shape[0], batch_size):
        c = (score(x[s:s + batch_size]) > 0).sum(0)
        counts = c if counts is None else counts + c
    return counts.numpy().astype(np.int64)


def paper_match(ep_score: Callable, sae_score: Callable, acts, n: int = 100, min_active: int = 20,
                min_f1: float = 0.5, batch_size: int = 1024) -> dict:
    """The official EP→SAE comparison (``scripts/compare_sae.py``) on the rows of acts [N, d].

    Top-n rows per unit among positive scores only; units with fewer than ``min_active`` positive rows
    are ineligible; each eligible region's best eligible feature by overlap (ties: the lower feature id);
    F1 = 2·overlap / (|A| + |B|); regions with zero best overlap are dropped. Returns the headline
    ``matched_fraction`` (F1 > ``min_f1`` among matched regions), the counts, and per-region arrays
    ``best_feature`` / ``best_f1`` ([K]; -1 / 0 where a region is ineligible or overlaps nothing).
    """
    region_sets = top_tokens(ep_score, acts, n, batch_size, positive_only=True)
    feature_sets = top_tokens(sae_score, acts, n, batch_size, positive_only=True)
    region_ok = positive_counts(ep_score, acts, batch_size) >= min_active
    feature_ok = positive_counts(sae_score, acts, batch_size) >= min_active
    n_rows = int(max(region_sets.max(initial=-1), feature_sets.max(initial=-1))) + 1
    a, b = _indicator(region_sets, n_rows), _indicator(feature_sets, n_rows)
    overlap = (a @ b.T).toarray()  # [K, F] |A∩B|
    overlap[~region_ok] = 0
    overlap[:, ~feature_ok] = 0
    best_feature = overlap.argmax(1)
    best_overlap = overlap[np.arange(len(overlap)), best_feature]
    size_a, size_b = (region_sets >= 0).sum(1), (feature_sets >= 0).sum(1)
    f1 = np.where(best_overlap > 0, 2.0 * best_overlap / np.maximum(size_a + size_b[best_feature], 1), 0.0)
    matched = best_overlap > 0
    best_feature = np.where(matched, best_feature, -1)
    best_region = overlap.argmax(0)  # SAE→EP: each eligible feature's best eligible region, the same rules
    back = overlap[best_region, np.arange(overlap.shape[1])]
    back_f1 = np.where(back > 0, 2.0 * back / np.maximum(size_b + size_a[best_region], 1), 0.0)
    sae_to_ep = {"features_with_overlap": int((back > 0).sum()),
                 "matched_fraction": float((back_f1[back > 0] > min_f1).mean()) if (back > 0).any() else 0.0,
                 "median_f1": float(np.median(back_f1[back > 0])) if (back > 0).any() else 0.0,
                 "best_region": np.where(back > 0, best_region, -1), "best_f1": back_f1}
    return {"regions": len(region_sets), "features": len(feature_sets),
            "eligible_regions": int(region_ok.sum()), "eligible_features": int(feature_ok.sum()),
            "regions_with_overlap": int(matched.sum()),
            "matched_fraction": float((f1[matched] > min_f1).mean()) if matched.any() else 0.0,
            "median_f1": float(np.median(f1[matched])) if matched.any() else 0.0,
            "features_used": int(len(np.unique(best_feature[matched & (f1 > min_f1)]))),
            "min_f1": min_f1, "top_n": n, "min_active": min_active,
            "best_feature": best_feature, "best_f1": f1, "region_sets": region_sets, "feature_sets": feature_sets,
            "sae_to_ep": sae_to_ep}


def top1_coherence(region_sets: np.ndarray, sae_score: Callable, acts, k: int = 5) -> dict:
    """The official ``_top1_coherence``: for every region with at least k positive tokens, its k best tokens
    (the first k of ``region_sets`` [K, n], best first, -1 padded) and the SAE feature most active on each;
    how many distinct features those are (1: the SAE sees one concept there; k: the region is finer, composite
    or noisy). Returns the histogram over 1..k, ``frac_all_same`` and ``mean_distinct``."""
    top = region_sets[:, :k]
    evaluated = top.shape[1] == k and len(top) > 0
    top = top[(top >= 0).all(1)] if evaluated else top[:0]
    x = torch.as_tensor(acts)
    top1 = sae_score(x[torch.as_tensor(top.ravel())]).argmax(1).numpy().reshape(top.shape) if len(top) else top
    distinct = np.array([len(set(row)) for row in top1.tolist()], dtype=np.int64)
    histogram = {d: int((distinct == d).sum()) for d in range(1, k + 1)}
    n = len(distinct)
    return {"top_k": k, "n_evaluated": n, "n_regions": len(region_sets), "histogram": histogram,
            "frac_all_same": histogram[1] / max(n, 1), "mean_distinct": float(distinct.mean()) if n else 0.0}


def _indicator(sets: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """[U, n] index sets (-1 padding) → [U, n_rows] 0/1 sparse matrix."""
    unit, col = np.nonzero(sets >= 0)
    data = np.ones(len(unit), dtype=np.float64)
    return sp.csr_matrix((data, (unit, sets[unit, col])), shape=(sets.shape[0], n_rows))


def set_f1(a_sets: np.ndarray, b_sets: np.ndarray) -> sp.csr_matrix:
    """F1 of every pair of sets: a_sets [K, n], b_sets [F, m] (-1 padding) → sparse [K, F].

    Pairs that share no row are absent (F1 = 0).
    """
    n_rows = int(max(a_sets.max(initial=-1), b_sets.max(initial=-1))) + 1
    a, b = _indicator(a_sets, n_rows), _indicator(b_sets, n_rows)
    inter = (a @ b.T).tocoo()  # [K, F] |A∩B| on overlapping pairs
    size_a, size_b = (a_sets >= 0).sum(1), (b_sets >= 0).sum(1)
    f1 = 2.0 * inter.data / (size_a[inter.row] + size_b[inter.col])
    return sp.csr_matrix((f1, (inter.row, inter.col)), shape=(len(a_sets), len(b_sets)))


def best_match(f1: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best column → (column [K] int64, -1 if it overlaps none; F1 [K] float64)."""
    f1 = f1.tocsr()
    score = f1.max(axis=1).toarray().ravel()
    col = np.asarray(f1.argmax(axis=1)).ravel().astype(np.int64)
    col[score <= 0] = -1
    return col, score


def hungarian(f1: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching maximising total F1 → (rows, cols, f1) of the pairs that overlap.

    Rows and columns that overlap nothing cannot add to the total, so the assignment is solved on the
    rest only (exact, and much smaller). Pairs assigned with F1 0 are dropped.
    """
    f1 = f1.tocsr()
    rows, cols = np.unique(f1.nonzero()[0]), np.unique(f1.nonzero()[1])
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    dense = f1[rows][:, cols].toarray()
    r, c = linear_sum_assignment(dense, maximize=True)
    score = dense[r, c]
    keep = score > 0
    return rows[r[keep]], cols[c[keep]], score[keep]


def match_summary(f1: sp.csr_matrix, min_f1: float = 0.5) -> dict:
    """Headline numbers of a region × feature F1 matrix (regions are rows); a pair counts as matched with
    F1 > ``min_f1``."""
    n_regions, n_features = f1.shape
    best_col, best = best_match(f1)
    _, _, one_to_one = hungarian(f1)
    n_pairs = min(n_regions, n_features)
    return {
        "regions": n_regions, "features": n_features,
        "matched_fraction": float((best > min_f1).mean()),  # best match F1 > min_f1
        "median_best_f1": float(np.median(best)),
        "features_used_by_best_matches": int(len(np.unique(best_col[best > min_f1]))),
        "hungarian_mean_f1": float(one_to_one.sum() / n_pairs),  # over min(K, F) pairs; unmatched count 0
        "hungarian_matched_fraction": float((one_to_one > min_f1).sum() / n_regions),
        "min_f1": min_f1,
    }


def pair_html(contexts, doc: np.ndarray, pos: np.ndarray, region: int, region_set: np.ndarray, feature: int,
              feature_set: np.ndarray, f1: float, n: int = 3, window: int = 8) -> str:
    """A card for one region/feature pair: the top ``n`` tokens of each, as contexts side by side.

    ``contexts`` is an ``ep.show.display.Contexts`` of the held-out documents; doc/pos [N] locate each row.
    Tokens in both sets are marked ●.
    """
    shared = set(region_set[region_set >= 0].tolist()) & set(feature_set[feature_set >= 0].tolist())

    def column(rows: np.ndarray) -> str:
        items = [f"{'● ' if i in shared else ''}{contexts.html(int(doc[i]), int(pos[i]), window)}"
                 for i in rows[rows >= 0][:n].tolist()]
        return "<br>".join(items) or "<i>(fires on no held-out token)</i>"

    feature_name = html.escape(str(feature)) if feature >= 0 else "none"
    return card_html(f"region {region} ↔ feature {feature_name}: F1 {f1:.2f}",
                     "<tr><th>EP region: top tokens</th><th>SAE feature: top tokens</th></tr>",
                     f"<tr><td style='vertical-align:top'>{column(region_set)}</td>"
                     f"<td style='vertical-align:top'>{column(feature_set)}</td></tr>",
                     table_style=";table-layout:fixed;width:100%")


def ep_build_flops(dictionary, calibration_tokens: int, calibration_batch: int = 1024) -> float:
    """FLOPs of building ``dictionary``: comparisons plus calibration (model forward passes excluded).

    Leader clustering compares each streamed token with every exemplar born before it: exemplar k,
    born at stream index i_k of N tokens, meets the N - 1 - i_k tokens after it, 2·d FLOPs each. The calibration
    compares every calibration token with the others in its batch (2·b·d each).
    """
    n = int(dictionary.counts.sum())
    d = dictionary.dim
    pairs = float((n - 1 - dictionary.exemplar_index.double()).sum())
    return 2.0 * d * pairs + 2.0 * d * min(calibration_batch, calibration_tokens) * calibration_tokens
