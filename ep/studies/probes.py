"""Linear probes at l0 = 1: how much of a task survives when a text is reduced to dictionary units?

A probe is a logistic regression (scikit-learn), scored by stratified cross-validation so that every
text is predicted by a probe that never saw it. Featurisations of the same texts:
- **raw**: one vector per text (the mean over its tokens, or its final token), standardised: the ceiling;
- **EP one-hot**: the id of that vector's nearest EP region (``Dictionary.assign``), one-hot over K;
- **SAE top-1**: the id of that vector's most active SAE feature, one-hot over F.
These two carry one active unit per text (l0 = 1), so the probe can only learn a label per unit: a
text whose unit never occurred in training falls back to the intercept. A second reading keeps l0 = 1
per *token*: each token's region (or top feature), averaged over the text (:meth:`TextActivations.bag`).
EP's *retention* is accuracy(EP) / accuracy(raw).

Tasks come from the data loaders (``ProbeTask``: texts, integer labels, class names): harmful vs
harmless instructions, code vs prose, language identity, and AxBench concept vs not (one task per
concept). :func:`text_activations` runs a task's texts through the model once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from .. import data
from ..model.activations import ActivationBatch, token_activations


@dataclass
class ProbeTask:
    name: str
    texts: list[str]
    labels: np.ndarray  # [n] int64 class index
    classes: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")
        if len(np.unique(self.labels)) < 2:
            raise ValueError(f"{self.name}: a probe task needs at least two classes")

    def __len__(self) -> int:
        return len(self.texts)


def _from_groups(name: str, groups: dict[str, list[str]]) -> ProbeTask:
    texts = [t for ts in groups.values() for t in ts]
    labels = [i for i, ts in enumerate(groups.values()) for _ in ts]
    return ProbeTask(name, texts, np.array(labels), list(groups))


def _sample(items: list[str], n: int, seed: int) -> list[str]:
    items = [t for t in items if t.strip()]
    return random.Random(seed).sample(items, min(n, len(items)))


# -----------------------------------------------------------------------------
# tasks from the data loaders

def harmful_vs_harmless(n_per_class: int = 100, seed: int = 0) -> ProbeTask:
    """Harmful (train + val) vs harmless (train) instructions, n of each."""
    harmful = data.instructions("harmful_train") + data.instructions("harmful_val")
    harmless = data.instructions("harmless_train")
    return _from_groups("harmful vs harmless", {"harmless": _sample(harmless, n_per_class, seed),
                                                 "harmful": _sample(harmful, n_per_class, seed)})


def _code_chunks(chars: int, max_files: int | None = None) -> list[list[str]]:
    """Each stdlib file cut at line boundaries into pieces of about ``chars`` characters."""
    files = []
    for source in data.python_source(max_files=max_files):
        pieces, piece = [], ""
        for line in source.splitlines(keepends=True):
            piece += line
            if len(piece) >= chars:
                pieces.append(piece)
                piece = ""
        files.append([p for p in pieces if p.strip()])
    return files


def code_vs_prose(n_per_class: int = 100, chars: int = 300, corpus_skip: int = 2000, seed: int = 0) -> ProbeTask:
    """Python source pieces (round-robin over stdlib files) vs Wikipedia paragraphs (from document
    ``corpus_skip`` on, so they stay out of a dictionary built on the first documents), cut to ``chars``."""
    files = _code_chunks(chars)
    random.Random(seed).shuffle(files)
    code, depth = [], 0
    while len(code) < n_per_class and any(len(f) > depth for f in files):
        code += [f[depth] for f in files if len(f) > depth][: n_per_class - len(code)]
        depth += 1
    prose = [doc[:chars] for doc in data.corpus(max_docs=n_per_class, skip=corpus_skip)]
    return _from_groups("code vs prose", {"prose": prose, "code": code})


def language_id(n_per_lang: int = 30, min_chars: int = 10, seed: int = 0) -> ProbeTask:
    """Which language is this line in? (chatterbot-corpus lines, English excluded; multi-class)."""
    lines = data.multilingual_lines()
    return _from_groups("language id", {lang: _sample([t for t in ts if len(t) >= min_chars], n_per_lang, seed)
                                        for lang, ts in lines.items()})


def axbench_concepts(n_per_class: int = 20, variant: str = "prod_2b_l20_v1", seed: int = 0) -> list[ProbeTask]:
    """One task per AxBench Concept10 concept: its positive outputs vs its negative outputs
    (latent-eval split; hard negatives left out, as AxBench does)."""
    metadata, _, latent = data.axbench_concepts(variant)
    tasks = []
    for meta in metadata:
        rows = latent[latent.concept_id == meta["concept_id"]]
        groups = {label: _sample(rows[rows.category == label].output.tolist(), n_per_class, seed)
                  for label in ("negative", "positive")}
        tasks.append(_from_groups(f"axbench {meta['concept_id']}: {meta['concept']}", groups))
    return tasks


# -----------------------------------------------------------------------------
# one vector per text

@dataclass
class TextActivations:
    """Every token's activation (BOS excluded) of a list of texts, and what a probe makes of them."""

    batch: ActivationBatch  # rows of all texts; batch.doc is the text index
    n_texts: int

    def pooled(self, pooling: str = "mean") -> torch.Tensor:
        """[n_texts, d]: the mean over each text's tokens, or its final token."""
        doc, acts = self.batch.doc, self.batch.acts
        if pooling == "mean":
            counts = torch.bincount(doc, minlength=self.n_texts)
            return torch.zeros(self.n_texts, acts.shape[1]).index_add_(0, doc, acts) / counts[:, None]
        if pooling == "final":  # the last token of each text (rows are in order within a text)
            last = torch.full((self.n_texts,), -1).scatter_reduce(0, doc, torch.arange(len(doc)), "amax")
            return acts[last]
        raise ValueError(f"pooling must be 'mean' or 'final', got {pooling!r}")

    def bag(self, ids: np.ndarray, n_units: int) -> sp.csr_matrix:
        """Per-token unit ids [n_tokens] (-1 = none) → [n_texts, n_units]: each text's mean one-hot,
        i.e. the fraction of its tokens in each unit (every token at l0 = 1)."""
        doc = self.batch.doc.numpy()
        counts = np.bincount(doc, minlength=self.n_texts)
        return sp.diags(1.0 / counts) @ one_hot(ids, n_units, rows=doc, n_rows=self.n_texts)


def text_activations(model, texts: list[str], layer: int, context_length: int = 32, batch_size: int = 16,
                     progress: bool = False) -> TextActivations:
    """Run texts through the model once; every per-text featurisation is derived from this."""
    batch = token_activations(model, texts, layer, context_length=context_length, batch_size=batch_size,
                              progress=progress)
    missing = sorted(set(range(len(texts))) - set(batch.doc.unique().tolist()))
    if missing:
        raise ValueError(f"texts {missing[:5]} have no tokens")
    return TextActivations(batch, len(texts))


# -----------------------------------------------------------------------------
# probes

def one_hot(ids: np.ndarray, n_units: int, rows: np.ndarray | None = None, n_rows: int | None = None) -> sp.csr_matrix:
    """ids [n] (-1 = no unit) → [n, n_units] sparse one-hot (rows with id -1 stay empty).

    With ``rows`` [n], entry i goes to row rows[i] instead (duplicates add up), giving [n_rows, n_units].
    """
    ids = np.asarray(ids)
    rows = np.arange(len(ids)) if rows is None else np.asarray(rows)
    keep = ids >= 0
    shape = (len(ids) if n_rows is None else n_rows, n_units)
    return sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], ids[keep])), shape=shape)


def one_hot_ceiling(ids: np.ndarray, labels: np.ndarray) -> float:
    """The best accuracy any probe on a one-hot code can reach on the texts it was fitted to: each unit
    predicts its majority class. Low means the units mix classes (the task is lost in the code); high with a
    low cross-validated accuracy means the units do not generalise to new texts."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    _, unit = np.unique(ids, return_inverse=True)
    counts = np.zeros((unit.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(counts, (unit, labels), 1)
    return float(counts.max(1).sum() / len(labels))


def _fit_predict(x_train, y_train, x_test, C: float, standardise: bool) -> np.ndarray:
    if standardise:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    return LogisticRegression(C=C, max_iter=5000).fit(x_train, y_train).predict(x_test)


def compare(vectors, labels: np.ndarray, features: dict[str, sp.spmatrix], folds: int = 5, seed: int = 0,
            C: float = 1.0) -> dict:
    """Cross-validated accuracy of a probe on the raw vectors vs on each sparse featurisation.

    Logistic regression (multinomial for > 2 classes); raw vectors are standardised, sparse codes are
    not. Stratified ``folds``-fold CV: every text is predicted once, by a probe that never saw it.
    Returns accuracies by name (plus "raw" and "majority", the most frequent training class), and
    "<name>_seen": the fraction of texts with at least one active unit that occurs in their training fold.
    """
    x, y = np.asarray(vectors, dtype=np.float64), np.asarray(labels)
    feats = {name: sp.csr_matrix(f) for name, f in features.items()}
    correct = {name: 0 for name in ("majority", "raw", *feats)}
    seen = {name: 0 for name in feats}
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        correct["majority"] += int((y[test] == np.bincount(y[train]).argmax()).sum())
        correct["raw"] += int((_fit_predict(x[train], y[train], x[test], C, True) == y[test]).sum())
        for name, f in feats.items():
            correct[name] += int((_fit_predict(f[train], y[train], f[test], C, False) == y[test]).sum())
            used = np.asarray(f[train].sum(0)).ravel() > 0  # units active in training
            seen[name] += int((f[test] @ used > 0).sum())
    out = {name: c / len(y) for name, c in correct.items()}
    return {**out, **{f"{name}_seen": s / len(y) for name, s in seen.items()}, "n": len(y), "folds": folds}
