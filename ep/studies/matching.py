"""Match two EP dictionaries: which regions persisted, which were dropped, which were introduced.

Exemplars are observed activations, so two dictionaries built from the *same token stream* (two
checkpoints of one model at one layer, or two layers of one checkpoint) can be compared directly,
each in its own centred space:

- **direction matching** (:func:`match_dictionaries`): the cosine between every pair of exemplars,
  a one-to-one assignment maximising the total cosine (Hungarian, ``scipy.optimize.linear_sum_assignment``),
  and a minimum cosine: a matched pair with cosine ≥ ``min_cosine`` *persisted*; the other regions of the first
  dictionary were *dropped*, those of the second *introduced*. Distances 1 − cos are also given in
  units of the first dictionary's θ (≤ 1 means the partner would have fallen inside the exemplar's cap);
- **membership matching** (:func:`membership`): a direction can persist while the tokens it holds
  change. Assign the same shared tokens with each dictionary (``Dictionary.assign``, each model's own
  activations of those tokens) and compare, per matched pair, the sets of tokens each region holds
  (F1, Jaccard). Only observed exemplars on a shared stream make this possible;
- a **layer ladder** (:func:`layer_ladder`): the persisted fraction between every pair of layers of one
  checkpoint, a sanity check (adjacent layers should agree more than distant ones).

Names: a *cosine* is a similarity in [-1, 1] (``min_cosine``, ``cosine``); a *distance* is 1 − cosine
(θ, ``Dictionary.threshold``, ``distance_theta``). For two sets A, B, F1 = 2|A∩B| / (|A| + |B|) (the same
number as their Dice coefficient): for two regions' token sets (:attr:`Membership.f1`, ``ep.studies.compare``)
and for how much of two whole dictionaries a one-to-one matching keeps (``Match.summary()["f1"]``,
:func:`layer_ladder`). A member-count floor is ``min_members``, as everywhere in the package.

The assignment is dense: it holds a [K_a, K_b] float64 matrix (8·K_a·K_b bytes, 200 MB for 5k × 5k).
For paper-scale dictionaries restrict it to regions with at least ``min_members`` members.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..method.dictionary import Dictionary


def exemplar_cosine(a: Dictionary, b: Dictionary, basis: str = "exemplar") -> np.ndarray:
    """[K_a, K_b] cosine between the exemplars (or, basis="mean", the mean-member directions) of ``a`` and ``b``
    (each a centred unit vector in its own space)."""
    if a.dim != b.dim:
        raise ValueError(f"dictionaries of different widths cannot be matched: {a.dim} vs {b.dim}")
    return (a.basis(basis).double() @ b.basis(basis).double().T).numpy()


@dataclass
class Match:
    """A one-to-one matching of regions of ``a`` (rows) to regions of ``b`` (columns)."""

    a_ids: np.ndarray  # [M] int64 region ids in a (sorted)
    b_ids: np.ndarray  # [M] int64 the partner of a_ids[i] in b
    cosine: np.ndarray  # [M] float64 exemplar cosine of each matched pair
    a_regions: np.ndarray  # [K_a'] region ids of a that took part (all, or those with >= min_members members)
    b_regions: np.ndarray  # [K_b'] same for b
    min_cosine: float  # a matched pair persisted if its cosine is at least this
    theta: float  # a cosine *distance*: distances are reported in units of this θ (a's)

    @property
    def persisted(self) -> np.ndarray:
        """[M] bool: the matched pair's cosine is at least ``min_cosine``."""
        return self.cosine >= self.min_cosine

    @property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(a ids, b ids) of the persisted pairs."""
        return self.a_ids[self.persisted], self.b_ids[self.persisted]

    @property
    def dropped(self) -> np.ndarray:
        """Region ids of a with no persisted partner."""
        return np.setdiff1d(self.a_regions, self.pairs[0])

    @property
    def introduced(self) -> np.ndarray:
        """Region ids of b with no persisted partner."""
        return np.setdiff1d(self.b_regions, self.pairs[1])

    @property
    def distance_theta(self) -> np.ndarray:
        """[M] cosine distance of each matched pair in units of θ."""
        return (1.0 - self.cosine) / self.theta

    def partner(self, n_a: int) -> np.ndarray:
        """[n_a] the persisted partner in b of each region id of a, or -1."""
        out = np.full(n_a, -1, np.int64)
        a, b = self.pairs
        out[a] = b
        return out

    def summary(self) -> dict:
        """Counts and fractions (persisted is a fraction of a's regions, introduced of b's)."""
        n_a, n_b, p = len(self.a_regions), len(self.b_regions), int(self.persisted.sum())
        return {"regions_a": n_a, "regions_b": n_b, "matched": len(self.a_ids), "persisted": p,
                "dropped": n_a - p, "introduced": n_b - p,
                "persisted_fraction": p / n_a, "dropped_fraction": (n_a - p) / n_a,
                "introduced_fraction": (n_b - p) / n_b, "f1": 2 * p / (n_a + n_b),
                "min_cosine": self.min_cosine, "theta": self.theta,
                "median_matched_cosine": float(np.median(self.cosine)) if len(self.cosine) else float("nan"),
                "within_theta_fraction": float((self.distance_theta <= 1).mean()) if len(self.cosine) else 0.0}


def match_dictionaries(a: Dictionary, b: Dictionary, min_cosine: float = 0.7, min_members: int = 1,
                       basis: str = "exemplar") -> Match:
    """Hungarian assignment of a's regions to b's on exemplar (or mean-member) cosine, maximised; a matched
    pair *persisted* if its cosine is at least ``min_cosine``."""
    if not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine is a cosine, in [-1, 1]; got {min_cosine}")
    a_regions = np.flatnonzero(a.counts.numpy() >= min_members)
    b_regions = np.flatnonzero(b.counts.numpy() >= min_members)
    cos = exemplar_cosine(a, b, basis)[np.ix_(a_regions, b_regions)]  # [K_a', K_b']
    rows, cols = linear_sum_assignment(cos, maximize=True)  # rows come back sorted
    return Match(a_ids=a_regions[rows], b_ids=b_regions[cols], cosine=cos[rows, cols],
                 a_regions=a_regions, b_regions=b_regions, min_cosine=float(min_cosine), theta=float(a.threshold))


@dataclass
class Membership:
    """Per matched pair: how many shared tokens each region holds and how many both hold."""

    size_a: np.ndarray  # [M] tokens assigned to the a region
    size_b: np.ndarray  # [M] tokens assigned to its partner in b
    both: np.ndarray  # [M] tokens assigned to both

    @property
    def f1(self) -> np.ndarray:
        """[M] 2|A∩B| / (|A| + |B|); NaN where neither region holds a token."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.size_a + self.size_b > 0, 2 * self.both / (self.size_a + self.size_b), np.nan)

    @property
    def jaccard(self) -> np.ndarray:
        """[M] |A∩B| / |A∪B|; NaN where neither region holds a token."""
        union = self.size_a + self.size_b - self.both
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.both / union, np.nan)


def membership(a_ids: np.ndarray, b_ids: np.ndarray, assigned_a: np.ndarray, assigned_b: np.ndarray) -> Membership:
    """
    Membership agreement of region pairs (a_ids[i], b_ids[i]) on one shared token stream.
    assigned_a [N]: the region in a of each shared token (``a.assign`` of model a's activations);
    assigned_b [N]: the same tokens' regions in b (``b.assign`` of model b's activations).
    """
    assigned_a, assigned_b = np.asarray(assigned_a, np.int64), np.asarray(assigned_b, np.int64)
    a_ids, b_ids = np.asarray(a_ids, np.int64), np.asarray(b_ids, np.int64)
    if assigned_a.shape != assigned_b.shape or assigned_a.ndim != 1:
        raise ValueError(f"assignments must be two [N] arrays of one token stream, got "
                         f"{assigned_a.shape} and {assigned_b.shape}")
    if a_ids.shape != b_ids.shape:
        raise ValueError(f"pairs must be two [M] arrays, got {a_ids.shape} and {b_ids.shape}")
    if min(a_ids.min(initial=0), b_ids.min(initial=0), assigned_a.min(initial=0), assigned_b.min(initial=0)) < 0:
        raise ValueError("region ids must be >= 0")
    n_b = int(max(assigned_b.max(initial=-1), b_ids.max(initial=-1))) + 1
    size_a = np.bincount(assigned_a, minlength=int(max(assigned_a.max(initial=-1), a_ids.max(initial=-1))) + 1)
    size_b = np.bincount(assigned_b, minlength=n_b)
    # |A ∩ B| for each pair: count the (a region, b region) codes of the tokens, look the pairs up
    codes, counts = np.unique(assigned_a * n_b + assigned_b, return_counts=True)
    want = a_ids * n_b + b_ids
    at = np.searchsorted(codes, want).clip(max=len(codes) - 1)
    both = np.where(codes[at] == want, counts[at], 0) if len(codes) else np.zeros(len(want), np.int64)
    return Membership(size_a=size_a[a_ids], size_b=size_b[b_ids], both=both)


def layer_ladder(dictionaries: dict[int, Dictionary] | list[Dictionary], min_cosine: float = 0.7,
                 min_members: int = 1) -> np.ndarray:
    """
    [L, L] symmetric persisted fraction (F1: 2·persisted / (K_i + K_j)) between every pair of
    dictionaries, e.g. one per layer of one checkpoint on one token stream; 1 on the diagonal.
    """
    ds = list(dictionaries.values()) if isinstance(dictionaries, dict) else list(dictionaries)
    out = np.eye(len(ds))
    for i in range(len(ds)):
        for j in range(i + 1, len(ds)):
            out[i, j] = out[j, i] = match_dictionaries(ds[i], ds[j], min_cosine, min_members).summary()["f1"]
    return out


def same_stream_token(match: Match, a: Dictionary, b: Dictionary) -> np.ndarray:
    """[M] bool: the matched exemplars are the same token of the stream (same stream index).

    Meaningful only when a and b were built on the same token stream: a region that finetuning left
    alone is then usually founded by the very same token.
    """
    return (a.exemplar_index[match.a_ids] == b.exemplar_index[match.b_ids]).numpy()


def direction_shift(acts_a, acts_b, a: Dictionary, b: Dictionary) -> np.ndarray:
    """[N] cosine distance between the same tokens' centred directions in a's and b's spaces, in units of a's θ."""
    cos = (a.directions(acts_a) * b.directions(acts_b)).sum(1).clamp(-1, 1)
    return ((1.0 - cos.double()) / a.threshold).numpy()


def random_pairs(match: Match, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The persisted a regions paired with random b regions: a chance baseline for membership agreement."""
    rng = np.random.default_rng(seed)
    a, _ = match.pairs
    return a, rng.choice(match.b_regions, size=len(a), replace=True)

