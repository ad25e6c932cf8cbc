"""Out-of-distribution scores: nearest-exemplar distance (free with a dictionary) and Mahalanobis.

A dictionary built on one distribution covers it with exemplars about θ apart, so a token from the
same distribution usually has an exemplar within ~θ; a token from elsewhere tends to be farther from
all of them. That distance costs one matrix product and no extra fitting. The classical baseline is the
Mahalanobis distance to a reference sample (Lee et al., 2018), with a Ledoit-Wolf shrunk covariance.

**The paper's protocol** (official ``scripts/exp_coverage.py``, figure ``scripts/make_fig_coverage.py``) reads
the same distance against θ instead of against another score: for dictionaries at several percentiles and
three token sets (held-out text of the build distribution, another language's Wikipedia, and uniform-random
token ids fed straight to the model), the **within-θ rate** (the share of tokens whose nearest exemplar is
within the dictionary's own θ: they fall inside an existing cell) and the quantiles of the distance
(:func:`coverage_stats`, :func:`coverage_table`). :func:`random_token_activations` makes the random set the
official way: ids drawn uniformly from the embedding table, never decoded to text (that would drop ids the
tokenizer cannot produce), special ids shifted by one, no BOS, and the first position left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_curve

from ..method import metrics
from ..method.batch import ActivationBatch
from ..model.activations import decoder_layers
from ..model.remote import inputs_on_device

# The percentiles of the official coverage figure (make_fig_coverage.py reads exp_coverage.py's run over the
# published gemma-2-2b-it layer-20 dictionaries, p1, p2, p4, p8 and p10).
COVERAGE_PERCENTILES = (1, 2, 4, 8, 10)


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


def coverage_stats(distances, threshold: float) -> dict:
    """The official ``_coverage_stats``: within-θ rate and the distribution of nearest-exemplar distances."""
    d = np.asarray(distances, dtype=np.float64)
    return {"n": int(d.size), "threshold": float(threshold), "within_threshold_rate": float((d <= threshold).mean()),
            "mean_distance": float(d.mean()), "median_distance": float(np.median(d)),
            "p90_distance": float(np.percentile(d, 90)), "p99_distance": float(np.percentile(d, 99))}


def coverage_table(dictionaries: dict, sets: dict) -> pd.DataFrame:
    """One row per (dictionary, token set): ``dictionaries`` {label: Dictionary}, ``sets`` {name: acts [N, d]}
    → columns dictionary, regions, set and :func:`coverage_stats`'s fields."""
    rows = []
    for label, d in dictionaries.items():
        for name, acts in sets.items():
            rows.append({"dictionary": label, "regions": len(d), "set": name,
                         **coverage_stats(nearest_exemplar_distance(d, acts), d.threshold)})
    return pd.DataFrame(rows)


@torch.no_grad()
def random_token_activations(model, layer: int, n_tokens: int, context_length: int = 128, batch_size: int = 8,
                             seed: int = 0) -> ActivationBatch:
    """Activations of uniform-random token ids (the official ``_random_token_batches``): rows of
    ``context_length`` ids from the whole embedding table, BOS/EOS/PAD ids shifted by one, no BOS prepended;
    every position but the first is kept, until ``n_tokens``."""
    vocab = model.config.get_text_config().vocab_size
    special = [getattr(model.tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")]
    generator = torch.Generator().manual_seed(seed)
    batches, seen = [], 0
    while seen < n_tokens:
        ids = torch.randint(0, vocab, (batch_size, context_length), generator=generator)  # [B, T]
        hit = torch.isin(ids, torch.tensor([s for s in special if s is not None] or [-1]))
        ids[hit] = (ids[hit] + 1) % vocab
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with model.trace(inputs_on_device(model, inputs, False)) as tracer:
            hidden = decoder_layers(model)[layer].output.save()
            tracer.stop()
        hidden = (hidden[0] if isinstance(hidden, tuple) else hidden).float().cpu()[:, 1:]  # [B, T - 1, d]
        rows, cols = torch.meshgrid(torch.arange(batch_size), torch.arange(1, context_length), indexing="ij")
        doc = rows.flatten() + len(batches) * batch_size
        batches.append(ActivationBatch(hidden.flatten(0, 1), doc, cols.flatten(), ids[:, 1:].flatten()))
        seen += len(batches[-1])
    out = ActivationBatch.cat(batches)
    return out[:n_tokens]


def _numpy(x) -> np.ndarray:
    return x.double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
