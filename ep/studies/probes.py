"""Linear probes at l0 = 1: how much of a task survives when a text is reduced to dictionary units?

**The paper's protocol** (SAEBench ``sparse_probing`` as the official ``ep/saebench_adapter.py`` runs it,
binary readout): every token (BOS and padding excluded) gets a single 1 at its nearest region, the argmax
centred cosine against a basis (the regions' mean-member directions, or their exemplars), and a text's
feature vector is the mean over its tokens, a K-dim **histogram** of regions (:func:`nearest_region`,
:meth:`TextActivations.bag`). Tasks are balanced one-vs-rest binary tasks (:func:`one_vs_rest`) on one
fixed train/test split (:func:`split`); :func:`binary_probes` scores the raw mean-pooled vectors, the full
histogram and its top-k features by |mean difference| on the training texts. Regularisation is chosen by
cross-validation on the training texts only (SAEBench picks its epoch on the test set; we do not).

**The readout.** The official sparse-probing run (``scripts/build_partitions.py`` ``_readout_for``) gives probes
the *signed* readout by default: every region's signed projection (x − c)·e, dense, mean-pooled over the text
(linear, so it equals the projection of the mean-pooled vector: ``compare.ep_scorer(d, basis)(pooled)``).
The one-hot histogram above is its ``--readout-override binary``. SAEBench logs, per readout,
``llm_test_accuracy`` (the raw probe), ``sae_test_accuracy`` (every feature) and ``sae_top_{1,2,5}_test_accuracy``
(the k features with the largest |mean difference|): :data:`SAEBENCH_FIELDS` names :func:`binary_probes`'
columns by them.

**A control** (what this module did first, a different question):

A probe is a logistic regression (scikit-learn), scored by stratified cross-validation so that every
text is predicted by a probe that never saw it. Featurisations of the same texts:
- **raw**: one vector per text (the mean over its tokens, or its final token), standardised: the ceiling;
- **EP one-hot**: the id of that vector's nearest EP region (``Dictionary.assign``), one-hot over K;
- **SAE top-1**: the id of that vector's most active SAE feature, one-hot over F.
These two carry one active unit per *text* (l0 = 1 for a summary of the text, not for its tokens), so
the probe can only learn a label per unit: a text whose unit never occurred in training falls back to
the intercept. It asks whether one region can name a whole text; the paper asks how much a text's
spread over regions keeps. EP's *retention* is accuracy(EP) / accuracy(raw).

Tasks come from the data loaders (``ProbeTask``: texts, integer labels, class names): harmful vs
harmless instructions, code vs prose, language identity, and AxBench concept vs not (one task per
concept); online, SAEBench's own datasets (:func:`saebench_task`, streamed from the hub).
:func:`text_activations` runs a task's texts through the model once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from joblib import Parallel, delayed
from sklearn import config_context
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from .. import data
from ..method.batch import ActivationBatch
from ..method.calibration import to_directions
from ..model.activations import token_activations


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


def _sample(items: list[str], n: int | None, seed: int) -> list[str]:
    """n of the non-blank items at random (all of them, shuffled, when n is None)."""
    items = [t for t in items if t.strip()]
    return random.Random(seed).sample(items, len(items) if n is None else min(n, len(items)))


# -----------------------------------------------------------------------------
# tasks from the data loaders

def harmful_vs_harmless(n_per_class: int | None = 100, seed: int = 0) -> ProbeTask:
    """Harmful (train + val) vs harmless (train) instructions, n of each (None: every harmful one, and as
    many harmless)."""
    harmful = _sample(data.instructions("harmful_train") + data.instructions("harmful_val"), n_per_class, seed)
    harmless = data.instructions("harmless_train")
    return _from_groups("harmful vs harmless", {"harmless": _sample(harmless, len(harmful), seed),
                                                 "harmful": harmful})


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


def language_id(n_per_lang: int | None = 30, min_chars: int = 10, seed: int = 0) -> ProbeTask:
    """Which language is this line in? (chatterbot-corpus lines, English excluded; multi-class)."""
    lines = data.multilingual_lines()
    return _from_groups("language id", {lang: _sample([t for t in ts if len(t) >= min_chars], n_per_lang, seed)
                                        for lang, ts in lines.items()})


def axbench_concept_tasks(n_per_class: int = 20, variant: str = "prod_2b_l20_v1", seed: int = 0
                          ) -> list[ProbeTask]:
    """One task per AxBench Concept10 concept: its positive outputs vs its negative outputs
    (latent-eval split; hard negatives left out, as AxBench does). The rows come from
    ``ep.data.axbench_concepts``; this makes probe tasks of them."""
    metadata, _, latent = data.axbench_concepts(variant)
    tasks = []
    for meta in metadata:
        rows = latent[latent.concept_id == meta["concept_id"]]
        groups = {label: _sample(rows[rows.category == label].output.tolist(), n_per_class, seed)
                  for label in ("negative", "positive")}
        tasks.append(_from_groups(f"axbench {meta['concept_id']}: {meta['concept']}", groups))
    return tasks


def axbench_topics(n_per_concept: int | None = 36, variant: str = "prod_2b_l20_v1", seed: int = 0) -> ProbeTask:
    """Which AxBench Concept10 concept is this text about? The positive outputs of every concept (latent-eval
    split), labelled by concept: a multi-class task for :func:`one_vs_rest`."""
    metadata, _, latent = data.axbench_concepts(variant)
    positive = latent[latent.category == "positive"]
    return _from_groups("axbench concepts", {
        f"{meta['concept_id']}: {meta['concept']}": _sample(
            positive[positive.concept_id == meta["concept_id"]].output.tolist(), n_per_concept, seed)
        for meta in metadata})


# -----------------------------------------------------------------------------
# SAEBench sparse_probing tasks (online only: the Hugging Face hub)

_PROFESSIONS = ("accountant architect attorney chiropractor comedian composer dentist dietitian dj filmmaker "
                "interior_designer journalist model nurse painter paralegal pastor personal_trainer photographer "
                "physician poet professor psychologist rapper software_engineer surgeon teacher yoga_teacher").split()
_AMAZON = {1: "Toys_and_Games", 2: "Cell_Phones_and_Accessories", 3: "Industrial_and_Scientific",
           5: "Musical_Instruments", 6: "Electronics"}
_GITHUB_FILES = [f"hf://datasets/codeparrot/github-code/data/train-{i:05d}-of-01126.parquet" for i in range(8)]
_EUROPARL = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}


def _bios(ids: tuple[int, ...]):
    keep = {i: _PROFESSIONS[i] for i in ids}
    return [(("LabHC/bias_in_bios",), {}, lambda r: (keep.get(r["profession"]), r["hard_text"], r["gender"]))]


def _one(path: str, row_fn) -> list:
    return [((path,), {}, row_fn)]


def _code(row: dict) -> tuple[str | None, str, None]:
    code = row["code"]  # SAEBench: skip ~50 tokens (150 chars) of licence header; keep files longer than 534 chars
    return (row["language"] if len(code) > 534 else None), code[150:], None


# name -> (classes in label order, [(load_dataset args, kwargs, row -> (class or None, text, stratum))])
SAEBENCH_TASKS = {
    "bias_in_bios_set1": ([_PROFESSIONS[i] for i in (0, 1, 2, 6, 9)], _bios((0, 1, 2, 6, 9))),
    "bias_in_bios_set2": ([_PROFESSIONS[i] for i in (11, 13, 14, 18, 19)], _bios((11, 13, 14, 18, 19))),
    "bias_in_bios_set3": ([_PROFESSIONS[i] for i in (20, 21, 22, 25, 26)], _bios((20, 21, 22, 25, 26))),
    "amazon_categories": (list(_AMAZON.values()), _one("canrager/amazon_reviews_mcauley_1and5", lambda r: (
        _AMAZON.get(int(r["category"])), r["text"], float(r["rating"])))),
    "amazon_sentiment": (["1 star", "5 stars"], _one("canrager/amazon_reviews_mcauley_1and5", lambda r: (
        {1.0: "1 star", 5.0: "5 stars"}.get(float(r["rating"])), r["text"], None))),
    "github_code": (["C", "Python", "HTML", "Java", "PHP"], [(("parquet",), {"data_files": _GITHUB_FILES}, _code)]),
    "ag_news": (["World", "Sports", "Business", "Sci/Tech"], _one("fancyzhx/ag_news", lambda r: (
        ("World", "Sports", "Business", "Sci/Tech")[r["label"]], r["text"], None))),
    "europarl": (list(_EUROPARL), [(("Helsinki-NLP/europarl", pair), {},
                 lambda r, lang=lang: (lang, r["translation"][lang], None)) for lang, pair in _EUROPARL.items()]),
}


def saebench_task(name: str, n_per_class: int = 250, seed: int = 0, pool: int = 4, max_chars: int = 2000,
                  max_rows: int | None = 2_000_000) -> ProbeTask:
    """One of SAEBench's ``sparse_probing`` datasets as a multi-class :class:`ProbeTask` (the classes SAEBench
    probes, one-vs-rest binary tasks then come from :func:`one_vs_rest`), streamed from the hub.

    What SAEBench uses (``sae_bench/evals/sparse_probing/eval_config.py`` ``dataset_names``,
    ``sae_bench/sae_bench_utils/dataset_info.py`` ``chosen_classes_per_dataset`` and
    ``sae_bench/sae_bench_utils/dataset_utils.py``, adamkarvonen/SAEBench 0.6.0):

    - ``LabHC/bias_in_bios`` (``_class_set1..3``): text ``hard_text``, class ``profession`` (int, 28
      professions) in three sets of five: {0, 1, 2, 6, 9}, {11, 13, 14, 18, 19}, {20, 21, 22, 25, 26};
      each class balanced by ``gender`` (0/1);
    - ``canrager/amazon_reviews_mcauley_1and5``: text ``text``, class ``category`` (int) in {1, 2, 3, 5, 6}
      (Toys_and_Games, Cell_Phones_and_Accessories, Industrial_and_Scientific, Musical_Instruments,
      Electronics), each balanced by ``rating`` (1.0/5.0); and ``..._sentiment``: class ``rating`` 1.0 vs 5.0;
    - ``codeparrot/github-code``: text ``code``, class ``language`` in {C, Python, HTML, Java, PHP}; files
      longer than 534 characters, the first 150 skipped (a licence header, after "Neurons in a Haystack");
    - ``fancyzhx/ag_news``: text ``text``, class ``label`` 0-3 (World, Sports, Business, Sci/Tech);
    - ``Helsinki-NLP/europarl``: class = language in {en, fr, de, es, nl}, text ``translation[lang]`` of the
      configs en-fr, fr-it, de-en, es-fr, nl-pt (the first rows of each).

    Differences, said plainly: SAEBench loads the train and test splits whole (bias_in_bios, Amazon,
    AG News) and samples 4000 + 1000 texts per binary task; here only the ``train`` split is streamed and
    :func:`split` makes the test set. Rows are read in stream order until every class (and stratum) holds
    ``pool`` × its share of ``n_per_class`` candidates (or ``max_rows`` rows), then ``seed`` draws the
    sample from that pool, so seeds differ only within the first rows of the stream. A class short of
    rows lowers every class to the same count (balance kept). The github-code repository is a loading
    script, which ``datasets`` 4+ no longer runs, so its parquet files (the first 8 of 1126) are read
    directly. Texts are cut to ``max_chars`` (the model's context truncates long before). The column
    formats are SAEBench's reading of these datasets, tested here only against mocked rows.
    """
    if name not in SAEBENCH_TASKS:
        raise ValueError(f"unknown SAEBench task {name!r}; one of {sorted(SAEBENCH_TASKS)}")
    classes, sources = SAEBENCH_TASKS[name]
    strata = 2 if name == "amazon_categories" or name.startswith("bias_in_bios") else 1  # gender / rating
    share = max(1, n_per_class // strata)  # texts per (class, stratum)
    found: dict[str, dict[object, list[str]]] = {c: {} for c in classes}

    def full(c: str) -> bool:
        return len(found[c]) >= strata and all(len(b) >= pool * share for b in found[c].values())

    def read(args: tuple, kwargs: dict, row_fn) -> None:
        from datasets import load_dataset
        stream = load_dataset(*args, split="train", streaming=True, **kwargs)
        mine = classes if len(sources) == 1 else [args[1].split("-")[0]]  # europarl: one language per config
        for i, row in enumerate(stream):
            c, text, stratum = row_fn(row)
            if c in found and text and text.strip():
                bucket = found[c].setdefault(stratum, [])
                if len(bucket) < pool * share:
                    bucket.append(text[:max_chars])
            if all(full(m) for m in mine) or (max_rows is not None and i + 1 >= max_rows):
                return

    for args, kwargs, row_fn in sources:
        data._online(f"SAEBench's {name} rows", partial(read, args, kwargs, row_fn),
                     instead="leave the SAEBench tasks out (they stream from the hub; no mirror holds them)")
    short = [c for c in classes if len(found[c]) < strata]
    if short:
        raise ValueError(f"{name}: the stream read holds no rows (or not both strata) for {short}")
    per = min(share, *(len(b) for f in found.values() for b in f.values()))
    rng = random.Random(seed)
    return _from_groups(f"saebench {name}", {
        c: [t for s in sorted(found[c], key=repr) for t in rng.sample(found[c][s], per)] for c in classes})


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


def _fit_predict(x_train, y_train, x_test, C: float, standardise: bool) -> np.ndarray:
    if standardise:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    return LogisticRegression(C=C, max_iter=5000).fit(x_train, y_train).predict(x_test)


def probe_accuracies(vectors, labels: np.ndarray, features: dict[str, sp.spmatrix], folds: int = 5, seed: int = 0,
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



# -----------------------------------------------------------------------------
# the paper's protocol: token histograms, one-vs-rest binary tasks, one fixed split

def nearest_region(dictionary, acts, basis: str = "mean", batch_size: int = 4096) -> np.ndarray:
    """acts [N, d] raw → [N] int64: each row's region by the largest centred cosine with the basis,
    "mean" (mean-member directions, the official default) or "exemplar" (= ``Dictionary.assign``)."""
    directions = dictionary.basis(basis).float()  # [K, d] unit (checks the name)
    if basis == "exemplar":
        return dictionary.assign(acts, batch_size)[0]
    x = torch.as_tensor(acts)
    out = np.empty(x.shape[0], np.int64)
    for s in range(0, x.shape[0], batch_size):
        out[s:s + batch_size] = (to_directions(x[s:s + batch_size], dictionary.centre) @ directions.T).argmax(1).numpy()
    return out


def split(labels: np.ndarray, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One fixed stratified train/test split of texts → (train indices, test indices), sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: max(1, round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def one_vs_rest(labels: np.ndarray, classes: list[str], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Balanced binary tasks from a multi-class labelling: for each class, all its texts (label 1) and as
    many texts drawn from the other classes (label 0) → {class: (text indices, binary labels)}.
    With two classes there is one task (the second class vs the first)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = classes[1:] if len(classes) == 2 else classes
    tasks = {}
    for name in chosen:
        c = classes.index(name)
        pos, rest = np.flatnonzero(labels == c), np.flatnonzero(labels != c)
        n = min(len(pos), len(rest))
        pos, neg = rng.choice(pos, n, replace=False), rng.choice(rest, n, replace=False)
        idx = np.concatenate([pos, neg])
        tasks[name] = (idx, np.r_[np.ones(n, np.int64), np.zeros(n, np.int64)])
    return tasks


# SAEBench sparse_probing's result fields -> binary_probes' column for a featurisation called {}
SAEBENCH_FIELDS = {"llm_test_accuracy": "raw", "sae_test_accuracy": "{}", "sae_top_1_test_accuracy": "{} top-1",
                   "sae_top_2_test_accuracy": "{} top-2", "sae_top_5_test_accuracy": "{} top-5"}


def top_by_mean_difference(x: sp.spmatrix | np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The k columns of x [n, F] with the largest |mean(class 1) − mean(class 0)| (SAEBench's selection)."""
    x = sp.csr_matrix(x)
    diff = np.asarray(x[y == 1].mean(0) - x[y == 0].mean(0)).ravel()
    return np.argsort(-np.abs(diff), kind="stable")[:k]


def _probe_accuracy(x_train, y_train, x_test, y_test, Cs, folds: int, seed: int, standardise: bool) -> float:
    """Logistic regression with C chosen by stratified CV on the training texts only, by ``GridSearchCV``'s rule
    (the best mean fold accuracy, the first C of a tie; a fold whose training part holds one class scores NaN
    and its C ranks last); test accuracy. A plain loop over the same fits, with scikit-learn's input checks
    off (the inputs are finite and well formed): on a hundred texts the bookkeeping of ``GridSearchCV`` and
    the checks cost as much as the fits."""
    if standardise:
        scaler = StandardScaler(with_mean=not sp.issparse(x_train)).fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    folds = max(2, min(folds, int(np.bincount(y_train).min())))
    cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x_train, y_train))

    def accuracy(C: float, fit: np.ndarray | slice, x, y) -> float:
        if len(np.unique(y_train[fit])) < 2:  # GridSearchCV's error_score: the fit fails, the fold scores NaN
            return np.nan
        return float((_fit_predict(x_train[fit], y_train[fit], x, C, standardise=False) == y).mean())

    with config_context(assume_finite=True, skip_parameter_validation=True):
        mean = np.array([np.mean([accuracy(C, a, x_train[b], y_train[b]) for a, b in cv]) for C in Cs])
        best = 0 if np.isnan(mean).all() else int(np.nanargmax(mean))
        return accuracy(Cs[best], slice(None), x_test, y_test)


def binary_probes(raw: np.ndarray | None, features: dict[str, sp.spmatrix], labels: np.ndarray, train: np.ndarray,
                  test: np.ndarray, top_k: tuple[int, ...] = (1, 2, 5), Cs=(0.01, 0.1, 1.0, 10.0, 100.0),
                  folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Test accuracy of binary probes on one fixed split: "raw" (mean-pooled activations [n, d],
    standardised), each featurisation [n, F] with all its features (standardised without centring), and
    "<name> top-k": only the k features with the largest |mean difference| on the training texts.
    Also "majority" (the training set's most frequent class) and the test size. ``raw=None`` skips the
    raw probe (to score more featurisations against one already computed)."""
    y = np.asarray(labels)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("binary_probes needs labels 0 and 1")
    out = {"texts": len(y), "test texts": len(test),
           "majority": float((y[test] == np.bincount(y[train]).argmax()).mean())}
    inputs = {}  # probe name -> (train features, test features)
    if raw is not None:
        x = np.asarray(raw, dtype=np.float64)
        inputs["raw"] = x[train], x[test]
    for name, f in features.items():
        f = sp.csr_matrix(f, dtype=np.float64)
        inputs[name] = f[train], f[test]
        for k in top_k:
            cols = top_by_mean_difference(f[train], y[train], k)
            inputs[f"{name} top-{k}"] = f[train][:, cols], f[test][:, cols]
    fits = [delayed(_probe_accuracy)(a, y[train], b, y[test], Cs, folds, seed, True) for a, b in inputs.values()]
    return out | dict(zip(inputs, _workers()(fits)))


def _workers() -> Parallel:
    """The probes of one task are independent small fits, bound by Python rather than arithmetic: one process
    per thread torch may use runs them side by side (the same fits, so the same accuracies as one after another);
    with one thread (``OMP_NUM_THREADS=1``, e.g. under ``make test``'s workers) they run in this process."""
    return Parallel(n_jobs=min(4, torch.get_num_threads()), backend="loky")
