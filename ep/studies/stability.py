"""How stable is a dictionary? Stream order, disjoint streams, resolution, saturation.

Leader clustering is order-dependent: the first token of a kind to arrive founds its region. So the
same tokens streamed in another order give another exemplar set. What survives?

- seeds as the official ``exp_seed_stability.py`` has them: a seed is a new seeded shuffle of the corpus, so each
  seed's dictionary is built on other documents (the notebook draws them with ``ep.data.corpus(seed=s)``);
- :func:`build_in_orders`: one dictionary per document order of the same tokens (documents stay whole), the
  gentler control: only the order changes;
- :func:`pair_cosines`: Hungarian-match two dictionaries' regions (by mean-member direction, as the
  official ``exp_seed_stability.py`` does) and report the matched cosine in both bases — the mean
  directions are averages over many members, the exemplars single samples;
- :func:`region_stability`: per region of one dictionary, its mean matched cosine over the others
  (official ``exp_per_region_stability.py``), to set against its size and coherence;
- :func:`resolution_parents`: dictionaries at several p on one stream; each finer region's parent is the
  coarser region that holds most of its members — a tree from broad regions to sub-meanings;
- :func:`new_regions_curve`: documents, tokens and regions after each batch, for ``ep.method.builder.saturation_stop``
  (where the official stop rule, "no new region for W consecutive batches of 128 documents", would fire).
"""

from __future__ import annotations

import numpy as np
import torch

from ..method.batch import ActivationBatch
from ..method.builder import build_dictionary
from ..method.calibration import Calibration, document_batches
from ..method.dictionary import Dictionary
from .matching import match_dictionaries


def reorder_documents(batch: ActivationBatch, seed: int) -> ActivationBatch:
    """The same tokens with the documents in a random order (each document's tokens stay in order)."""
    docs = torch.unique(batch.doc)                                              # [D] sorted
    rank = torch.empty(int(docs.max()) + 1, dtype=torch.int64)
    rank[docs] = torch.as_tensor(np.random.default_rng(seed).permutation(len(docs)))
    key = rank[batch.doc] * (int(batch.pos.max()) + 1) + batch.pos             # [n] new doc rank, then position
    order = torch.argsort(key)
    return batch[order]


def by_documents(batch: ActivationBatch, docs_per_batch: int) -> list[ActivationBatch]:
    """Split a stream into batches of ``docs_per_batch`` whole documents, in stream order (the official
    builder's unit: one extraction batch of prompts)."""
    return [batch[rows] for rows in document_batches(batch.doc, docs_per_batch)]


def build_in_orders(batch: ActivationBatch, calibration: Calibration, seeds: list[int],
                    n_samples: int = 4) -> list[Dictionary]:
    """One dictionary per document order (seed), all on the same tokens and the same frozen calibration."""
    return [build_dictionary([reorder_documents(batch, s)], calibration, n_samples=n_samples, progress=False)
            for s in seeds]


def pair_cosines(a: Dictionary, b: Dictionary, basis: str = "mean") -> dict[str, np.ndarray]:
    """Hungarian-match a's regions to b's on ``basis`` cosine; matched cosines in both bases and the pairs."""
    m = match_dictionaries(a, b, min_cosine=-1.0, basis=basis)
    i, j = m.a_ids, m.b_ids
    cos = lambda x, y: (x[i].double() * y[j].double()).sum(1).numpy()
    return {"a": i, "b": j, "mean": cos(a.mean_directions, b.mean_directions),
            "exemplar": cos(a.exemplars, b.exemplars)}


def region_stability(dictionaries: list[Dictionary]) -> dict[str, np.ndarray]:
    """For each region of dictionaries[0], its mean matched cosine over the other dictionaries, regions matched
    on mean-member directions: {"mean": [K0], "exemplar": [K0]} (unmatched by a smaller partner counts 0)."""
    first = dictionaries[0]
    total = {"mean": np.zeros(len(first)), "exemplar": np.zeros(len(first))}
    for other in dictionaries[1:]:
        p = pair_cosines(first, other, "mean")
        for basis in total:
            total[basis][p["a"]] += p[basis]
    return {basis: t / max(1, len(dictionaries) - 1) for basis, t in total.items()}


def resolution_parents(fine_ids: np.ndarray, coarse_ids: np.ndarray, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """Each fine region's parent: the coarse region holding most of its tokens (ties: lowest id).

    fine_ids, coarse_ids [N]: the region of every token in the fine and the coarse dictionary.
    Returns parent [n_fine] (-1 for a fine region with no token here) and share [n_fine], the fraction of
    the fine region's tokens inside its parent (1.0: the fine region nests cleanly)."""
    pairs = np.stack([fine_ids, coarse_ids], axis=1)
    uniq, count = np.unique(pairs, axis=0, return_counts=True)                # sorted by fine, then coarse
    order = np.lexsort((uniq[:, 1], -count, uniq[:, 0]))                       # per fine: most tokens, lowest id
    uniq, count = uniq[order], count[order]
    first = np.r_[True, uniq[1:, 0] != uniq[:-1, 0]]
    parent, share = np.full(n_fine, -1, np.int64), np.zeros(n_fine)
    totals = np.bincount(fine_ids, minlength=n_fine)
    parent[uniq[first, 0]] = uniq[first, 1]
    share[uniq[first, 0]] = count[first] / totals[uniq[first, 0]]
    return parent, share


def new_regions_curve(batches: list[ActivationBatch],
                      calibration: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents streamed, tokens streamed and region count after each batch: three [n_batches] int arrays."""
    seen: list[tuple[int, int]] = []
    build_dictionary(batches, calibration, n_samples=0, progress=False,
                     on_batch=lambda tokens, regions: seen.append((tokens, regions)))
    tokens, regions = zip(*seen)
    docs = np.cumsum([len(torch.unique(b.doc)) for b in batches])
    return docs, np.asarray(tokens), np.asarray(regions)
