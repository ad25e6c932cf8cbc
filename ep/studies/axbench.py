"""AxBench latent concept detection: rows → per-token activations → max-pooled detector scores → AUROC.

AxBench (Wu et al., 2025) asks whether a one-number-per-token *detector* tells rows that express a
concept (positives) from rows that do not (negatives). The paper's protocol (Rumbelow 2026; the official
``ep/_axbench_ep.py`` run by ``scripts/build_partitions.py``), which is the default here:
- the EP dictionary is built once, without labels, from a **generic text stream** (the paper: 10M Pile
  tokens; here ``ep.build`` on ``ep.data.corpus()``), never from AxBench rows;
- each row is chat-templated (user = ``input``, assistant = ``output``); training reads **all non-BOS
  tokens** of the templated rows (``train_scope="row"``);
- per concept, the region whose basis direction (exemplar or mean member: both bases are run) has the
  largest **contrast**: mean centred cosine over the positive rows' tokens minus the mean over the tokens
  of the negatives of the concept's genre (``choose="contrast"``);
- the detector is the raw projection h·e on that unit direction, bias 0 (``score="dot"``); a row's score
  is the **max over every token after the chat prefix**, the user's turn included (``scope="after_prefix"``);
- per concept, AUROC of the row scores on positives vs negatives (hard negatives dropped, as AxBench's
  ``AUCROCEvaluator`` does); then the mean over concepts.
Controls (this module's earlier defaults) are options of ``evaluate_layer``: ``scope="output"`` /
``train_scope="output"`` (the assistant's output only), ``choose="auroc"`` (the region with the best training
AUROC, as AxBench's SAE-A picks an SAE feature), ``score="cos"`` (centred cosine), and a dictionary built on
the training rows themselves (``rows_dictionary``); dictionaries of fewer build tokens, the prefixes of one
stream (``prefix_dictionaries``), show how coverage moves the numbers. Baselines: DiffMean, a logistic probe,
random directions, an SAE's features, and row length, the control to read every number against (positives
are longer).

Layout: templating and extraction (model code) at the top; everything below works on plain arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from ..method.builder import DictionaryBuilder, build_dictionary
from ..method.calibration import calibrate, to_directions
from ..method.dictionary import Dictionary
from ..method.metrics import auroc, auroc_columns
from ..model.activations import ActivationBatch, decoder_layers
from ..model.chat import chat_prompt
from ..model.interventions import random_direction, unit_difference

LABELS = {"positive": 1, "negative": 0}  # everything else (hard negatives) is left out, as in AxBench
SCOPES = ("after_prefix", "output", "row")
BASES = Dictionary.BASES  # "exemplar", "mean"

# what the paper ran (official ep/_axbench_ep.py via scripts/build_partitions.py), for results files
PAPER_PROTOCOL = {
    "dictionary": "generic text stream (10M Pile tokens), not AxBench rows",
    "train_tokens": "all non-BOS tokens of the chat-templated input + output rows",
    "region_choice": "argmax of mean centred cosine on positive tokens - mean on the genre's negative tokens",
    "score": "raw h.e of the unit basis direction, bias 0",
    "pooling": "max over all tokens after the chat prefix (user turn included)",
    "metric": "AUROC positives vs negatives, hard negatives dropped; mean over concepts",
    "bases": list(BASES),
    "model": "google/gemma-2-2b-it", "layer": 20, "concepts": "Concept500",
}


# -----------------------------------------------------------------------------
# rows → templated text → per-token activations (the only part that touches a model)

def template_row(tokenizer, prompt: str, output: str) -> tuple[str, int, tuple[int, int]]:
    """One AxBench row as a chat turn → (text without BOS, where the user's content starts, output span).

    The characters before ``prompt_start`` are the chat prefix (e.g. ``<start_of_turn>user\\n``), the
    tokens AxBench's ``get_prefix_length`` skips when it pools. Uses the tokenizer's own chat template when
    it has one (e.g. ``google/gemma-2-2b-it``), else Gemma's turn markup (``ep.model.chat.chat_prompt``,
    the same text). Both are stripped, as the Gemma template trims them.
    """
    prompt, output = prompt.strip(), output.strip()
    text = chat_prompt(prompt, output, tokenizer)  # without BOS: the tokenizer adds it (once)
    start = text.rfind(output)
    if start < 0:
        raise ValueError("the chat template changed the output text: cannot locate it")
    prompt_start = text.find(prompt) if prompt else start
    if prompt_start < 0 or prompt_start > start:
        raise ValueError("the chat template changed the prompt text: cannot locate it")
    return text, prompt_start, (start, start + len(output))


@dataclass
class RowActivations:
    """Per-token activations of a table of rows, every real token except BOS, rows concatenated."""

    acts: dict[int, torch.Tensor]  # layer -> [N, d] float32
    row: torch.Tensor  # [N] int64, index of the token's row
    output: torch.Tensor  # [N] bool, token lies inside the assistant's output
    token: torch.Tensor  # [N] int64 token ids
    n_rows: int
    after_prefix: torch.Tensor | None = None  # [N] bool, token starts at or after the user's content

    def keep(self, scope: str) -> torch.Tensor:
        """[N] bool: the tokens of ``scope``: ``after_prefix`` (the paper's), ``output`` or the whole ``row``."""
        if scope == "output":
            return self.output
        if scope == "row":
            return torch.ones_like(self.output)
        if scope == "after_prefix":
            return self.output if self.after_prefix is None else self.after_prefix | self.output
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")

    def lengths(self, scope: str = "after_prefix") -> np.ndarray:
        """[n_rows] number of tokens in scope per row (the length-only control score)."""
        return np.bincount(self.row[self.keep(scope)].numpy(), minlength=self.n_rows)


@torch.no_grad()
def row_activations(model, frame: pd.DataFrame, layers: Sequence[int], *, context_length: int = 256,
                    batch_size: int = 8, progress: bool = True) -> RowActivations:
    """Template every row of ``frame`` (columns ``input``, ``output``) and read ``layers`` in one pass.

    Rows are truncated to ``context_length`` tokens (BOS included). The forward stops after the
    deepest requested layer. Positions come from the attention mask, so padding side does not matter.
    """
    tok = model.tokenizer
    layers = sorted(set(int(layer) for layer in layers))
    blocks = decoder_layers(model)
    texts, prompt_starts, spans = zip(*(template_row(tok, r.input, r.output) for r in frame.itertuples()),
                                      strict=True)
    # batch rows of similar length together (less padding); every token keeps its row's index
    order = np.argsort([len(ids) for ids in tok(list(texts))["input_ids"]], kind="stable")
    out = {layer: [] for layer in layers}
    rows, is_out, is_after, ids_all = [], [], [], []
    for s in tqdm(range(0, len(texts), batch_size), desc="rows", disable=not progress):
        batch = order[s:s + batch_size]
        enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True, truncation=True,
                  max_length=context_length, return_offsets_mapping=True)
        ids, mask, offsets = enc["input_ids"], enc["attention_mask"], enc["offset_mapping"]  # [B, T], [B, T, 2]
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        saved = []  # outside the trace: only .save()d values leave it
        with model.trace({k: v.to(model.device) for k, v in inputs.items()}) as tracer:
            for layer in layers:  # execution order
                saved.append(blocks[layer].output.save())
            tracer.stop()
        keep = mask.bool() & (ids != tok.bos_token_id) if tok.bos_token_id is not None else mask.bool()
        b, t = keep.nonzero(as_tuple=True)
        for layer, h in zip(layers, saved, strict=True):
            h = h[0] if isinstance(h, tuple) else h
            out[layer].append(h.float().cpu()[b, t])
        span = torch.tensor([spans[i] for i in batch])  # [B, 2] output character span
        first = torch.tensor([prompt_starts[i] for i in batch])  # [B] first character of the user's content
        start, end = offsets[b, t, 0], offsets[b, t, 1]
        is_out.append((start >= span[b, 0]) & (end <= span[b, 1]) & (end > start))
        is_after.append(end > first[b])  # a token that reaches into the content is not prefix
        rows.append(torch.as_tensor(batch)[b])
        ids_all.append(ids[b, t])
    rows = torch.cat(rows)
    back = torch.argsort(rows, stable=True)  # back to the frame's row order, tokens in sequence
    return RowActivations({layer: torch.cat(a)[back] for layer, a in out.items()}, rows[back],
                          torch.cat(is_out)[back], torch.cat(ids_all)[back], len(texts), torch.cat(is_after)[back])


# -----------------------------------------------------------------------------
# data: which rows each concept is trained and evaluated on

@dataclass
class ConceptSplit:
    concept_id: int
    concept: str
    genre: str  # text / code / math
    train_rows: np.ndarray  # indices into the training table
    train_labels: np.ndarray  # 1 positive, 0 negative
    eval_rows: np.ndarray  # indices into the evaluation table (hard negatives excluded)
    eval_labels: np.ndarray


def subsample(train: pd.DataFrame, latent: pd.DataFrame, n_train_pos: int | None = None,
              n_train_neg: int | None = None, n_eval: int | None = None, seed: int = 0):
    """Smaller tables for smoke runs: per concept ``n_train_pos`` positives and ``n_eval`` evaluation rows
    of each category; ``n_train_neg`` shared negatives per genre (``None`` keeps all). Evaluation rows
    that are never scored (hard negatives) are dropped here, so no forward pass is spent on them."""
    def take(df: pd.DataFrame, keys: list[str], n: int | None) -> pd.DataFrame:
        if n is None:
            return df
        return df.sample(frac=1.0, random_state=seed).groupby(keys, sort=False).head(n).sort_index()

    pos, neg = train[train.category == "positive"], train[train.category == "negative"]
    train = pd.concat([take(neg, ["concept_genre"], n_train_neg), take(pos, ["concept_id"], n_train_pos)])
    latent = take(latent[latent.category.isin(list(LABELS))], ["concept_id", "category"], n_eval)
    return train.reset_index(drop=True), latent.reset_index(drop=True)


def concept_splits(metadata: list[dict], train: pd.DataFrame, latent: pd.DataFrame,
                   negatives: str = "genre") -> list[ConceptSplit]:
    """Per concept: its training positives + negatives, and its evaluation positives + negatives.

    ``negatives="genre"`` gives each concept the shared negatives of its own genre (text/code/math),
    as AxBench's training does; ``"all"`` gives every concept all shared negatives.
    """
    if negatives not in ("genre", "all"):
        raise ValueError(f"negatives must be 'genre' or 'all', got {negatives!r}")
    splits = []
    for meta in metadata:
        cid, concept = int(meta["concept_id"]), meta["concept"]
        genre = meta["concept_genres_map"][concept][0]
        pos = (train.category == "positive") & (train.concept_id == cid)
        neg = (train.category == "negative") & ((train.concept_genre == genre) if negatives == "genre" else True)
        ev = (latent.concept_id == cid) & latent.category.isin(list(LABELS))
        if not (pos.any() and neg.any() and ev.any()):
            continue
        tr = np.flatnonzero(pos | neg)
        ev_rows = np.flatnonzero(ev)
        splits.append(ConceptSplit(cid, concept, genre, tr, pos.to_numpy()[tr].astype(int),
                                   ev_rows, latent.category.iloc[ev_rows].map(LABELS).to_numpy().astype(int)))
    return splits


def resample(splits: list[ConceptSplit], seed: int, rows: str = "both") -> list[ConceptSplit]:
    """Bootstrap copies of the splits: each concept's evaluation rows (``rows="eval"``), or its training and
    evaluation rows (``"both"``), redrawn with replacement within each label. Rerunning the choice and the
    scoring on them shows how much the mean AUROC would move with another draw of rows of the same size (the
    seed spread), without another forward pass."""
    if rows not in ("eval", "both"):
        raise ValueError(f"rows must be 'eval' or 'both', got {rows!r}")
    rng = np.random.default_rng(seed)

    def draw(rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pick = [rng.choice(np.flatnonzero(labels == v), size=int((labels == v).sum())) for v in (1, 0)]
        i = np.concatenate(pick)
        return rows[i], labels[i]

    out = []
    for s in splits:  # evaluation rows first: "eval" and "both" redraw them alike under one seed
        eval_rows, eval_labels = draw(s.eval_rows, s.eval_labels)
        train_rows, train_labels = draw(s.train_rows, s.train_labels) if rows == "both" else (s.train_rows,
                                                                                                 s.train_labels)
        out.append(ConceptSplit(s.concept_id, s.concept, s.genre, train_rows, train_labels, eval_rows, eval_labels))
    return out


# -----------------------------------------------------------------------------
# detectors and pooling (plain arrays from here on)

@dataclass
class LinearDetector:
    """Token score h·w + b, or the centred cosine ((h − c)/‖h − c‖)·w when ``centre`` is set."""

    direction: torch.Tensor  # [d]
    centre: torch.Tensor | None = None  # [d]
    bias: float = 0.0

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N]
        return token_vectors(acts, self.centre) @ self.direction.float() + self.bias


def token_vectors(acts: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """What a detector scores, [N, d] float32: the centred unit rows (h − c)/‖h − c‖ (``centre`` given), else h."""
    return to_directions(acts, centre) if centre is not None else acts.float()


def max_pool(scores: torch.Tensor, row: torch.Tensor, keep: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Token scores [N] or [N, K] → per-row max over the kept tokens [n_rows] or [n_rows, K].

    A row with no kept token (e.g. its output was truncated away) gets the minimum score seen (per column).
    """
    s = scores[keep].float()
    index = row[keep].reshape(-1, *([1] * (s.ndim - 1))).expand_as(s)
    out = s.new_full((n_rows, *s.shape[1:]), float("-inf")).scatter_reduce_(0, index, s, "amax")
    lowest = s.amin(0) if len(s) else s.new_zeros(s.shape[1:])
    return torch.where(out == float("-inf"), lowest, out).nan_to_num()


def unit_row_scores(score_fn: Callable[[torch.Tensor], torch.Tensor], acts: torch.Tensor, row: torch.Tensor,
                    keep: torch.Tensor, n_rows: int, chunk_size: int = 2048) -> torch.Tensor:
    """Max-pooled scores of every unit (region, feature) at once: score_fn [n, d] -> [n, K]; → [n_rows, K]."""
    idx = keep.nonzero()[:, 0]
    best = None
    for s in range(0, len(idx), chunk_size):
        i = idx[s:s + chunk_size]
        scores = score_fn(acts[i]).float()  # [n, K]
        index = row[i][:, None].expand_as(scores)
        init = scores.new_full((n_rows, scores.shape[1]), float("-inf"))
        pooled = init.scatter_reduce_(0, index, scores, "amax")
        best = pooled if best is None else torch.maximum(best, pooled)
    return best.nan_to_num(neginf=float(best[best.isfinite()].min()))


def row_sums(acts: torch.Tensor, row: torch.Tensor, keep: torch.Tensor, n_rows: int,
             centre: torch.Tensor | None = None, chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the sum of its kept tokens' vectors, raw h or, ``centre`` given, centred unit (h − c)/‖h − c‖,
    [n_rows, d] (float64), and the number of kept tokens [n_rows]. The token mean over any set of rows
    (``token_mean``), and so any linear score's, follows without another pass over the tokens."""
    idx = keep.nonzero()[:, 0]
    sums = torch.zeros(n_rows, acts.shape[1], dtype=torch.float64)
    for s in range(0, len(idx), chunk_size):
        i = idx[s:s + chunk_size]
        sums.index_add_(0, row[i], token_vectors(acts[i], centre).double())
    return sums, torch.bincount(row[idx], minlength=n_rows)


def token_mean(sums: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The mean over the tokens (not the rows) of ``rows`` from per-row sums and counts; a row listed twice
    (a bootstrap redraw) counts twice."""
    return sums[rows].sum(0) / counts[rows].sum().clamp(min=1)


def unit_row_sums(directions: torch.Tensor, centre: torch.Tensor | None, acts: torch.Tensor, row: torch.Tensor,
                  keep: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the sum over its kept tokens of every unit's score, the centred cosine ((h − c)/‖h − c‖)·e
    (``centre`` given) or h·e, [n_rows, K] (float64), and the number of kept tokens [n_rows]: enough for a
    token-weighted mean over any set of rows (``contrast_units``). The score is linear in the token's vector,
    so the rows' sums (``row_sums``) meet the K directions [K, d] once, instead of every token every unit."""
    sums, counts = row_sums(acts, row, keep, n_rows, centre)
    return sums @ directions.double().T, counts


def contrast_units(row_sums: torch.Tensor, row_counts: torch.Tensor, splits: list[ConceptSplit]
                   ) -> list[tuple[int, float]]:
    """The paper's region choice: per concept, the unit with the largest mean score over the positive rows'
    tokens minus the mean over the negative rows' tokens (means over tokens, not rows), and that contrast."""
    out = []
    for split in splits:
        rows, pos = torch.as_tensor(split.train_rows), torch.as_tensor(split.train_labels.astype(bool))
        contrast = token_mean(row_sums, row_counts, rows[pos]) - token_mean(row_sums, row_counts, rows[~pos])  # [K]
        k = int(contrast.argmax())
        out.append((k, float(contrast[k])))
    return out


def best_units(row_scores: torch.Tensor, splits: list[ConceptSplit]) -> list[tuple[int, float]]:
    """Per concept, the unit (column of the training rows' max-pooled scores [n_rows, K]) with the best
    training AUROC, and that AUROC; ties (common with few rows) go to the larger mean score gap between
    positive and negative rows. This is how AxBench's SAE-A picks an SAE feature (EP's control choice)."""
    out = []
    for split in splits:
        x, pos = row_scores[split.train_rows].numpy(), split.train_labels.astype(bool)
        a = auroc_columns(pos, x)
        gap = x[pos].mean(0) - x[~pos].mean(0)
        k = int(np.argmax(np.where(a >= a.max(), gap, -np.inf)))
        out.append((k, float(a[k])))
    return out


# -----------------------------------------------------------------------------
# the methods' direction choosers (training split only)

def training_tokens(rows: RowActivations, keep: torch.Tensor, split: ConceptSplit) -> tuple[torch.Tensor, ...]:
    """Indices of the kept tokens of the split's positive and of its negative training rows: ([n1], [n0]).
    A row listed twice (a bootstrap redraw) contributes its tokens twice."""
    order = torch.argsort(rows.row, stable=True)  # tokens grouped by row
    counts = torch.bincount(rows.row, minlength=rows.n_rows)
    starts = torch.cumsum(counts, 0) - counts
    out = []
    for label in (1, 0):
        ids = [order[starts[r]:starts[r] + counts[r]] for r in split.train_rows[split.train_labels == label]]
        idx = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)
        out.append(idx[keep[idx]])
    return tuple(out)


def diffmean(sums: torch.Tensor, counts: torch.Tensor, split: ConceptSplit) -> LinearDetector:
    """The unit difference of the positive training rows' token mean and the negative rows', score h·w: the
    direction ``diff_in_means`` gives on the two token sets, here from per-row sums of h (``row_sums``), so a
    bootstrap redraw of the rows costs no pass over the tokens."""
    rows, pos = torch.as_tensor(split.train_rows), torch.as_tensor(split.train_labels.astype(bool))
    return LinearDetector(unit_difference(token_mean(sums, counts, rows[pos]), token_mean(sums, counts, rows[~pos])))


def probe(acts: torch.Tensor, rows: RowActivations, keep: torch.Tensor, split: ConceptSplit,
          C: float = 0.1, max_iter: int = 300) -> LinearDetector:
    """Logistic regression on tokens (label = its row's), standardised features, balanced classes. Fitted in
    float32, the activations' own precision (float64 took half as long again; AUROCs agreed to 1e-3)."""
    pos, neg = training_tokens(rows, keep, split)
    x = acts[torch.cat([pos, neg])].float().numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64) + 1e-6
    z = (x - mu.astype(np.float32)) / sd.astype(np.float32)
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced").fit(z, y)
    w = clf.coef_[0].astype(np.float64) / sd  # undo the standardisation: a plain linear score on raw h
    return LinearDetector(torch.as_tensor(w, dtype=torch.float32), bias=float(clf.intercept_[0] - w @ mu))


def random_detector(d: int, seed: int) -> LinearDetector:
    """A random unit direction, score h·r: the floor every method should clear."""
    return LinearDetector(random_direction(d, seed))


def rows_dictionary(train: RowActivations, layer: int, percentile: float, seed: int = 0):
    """Control: an EP dictionary of every training token at ``layer`` (the paper builds it from a generic stream).

    Calibrated on the same tokens; rows are streamed in a seeded random order (leader clustering is
    order-dependent, and the table is sorted by concept), each row's tokens in sequence.
    Region contexts: ``doc`` = row index, ``token`` = token id (``pos`` is not tracked: 0).
    """
    acts = train.acts[layer]
    rank = torch.randperm(train.n_rows, generator=torch.Generator().manual_seed(seed))
    order = torch.argsort(rank[train.row], stable=True)  # [N]
    cal = calibrate(acts, percentile, seed=seed, meta={"layer": layer})
    batch = ActivationBatch(acts[order], train.row[order], torch.zeros_like(order), train.token[order])
    return build_dictionary([batch], cal, progress=False, n_samples=0, meta={"layer": layer})


def prefix_dictionaries(batches, calibration, sizes: Sequence[int], n_samples: int = 0) -> dict[int, object]:
    """{n: the dictionary of the stream's first n tokens} for every n in ``sizes``, from one pass over ``batches``
    (ActivationBatch-like). Leader clustering is sequential, so a snapshot of the builder after n tokens is
    exactly what a build stopped at n gives; a stream shorter than a size leaves that size out."""
    builder = DictionaryBuilder(calibration, n_samples=n_samples)
    todo, out = sorted(set(int(n) for n in sizes)), {}
    add = lambda b, rows: builder.add_arrays(b.acts[rows], b.doc[rows], b.pos[rows], b.token[rows])
    for batch in batches:
        start = 0
        while todo and builder.tokens + len(batch) - start >= todo[0]:
            cut = start + todo[0] - builder.tokens
            add(batch, slice(start, cut))
            out[todo.pop(0)] = builder.snapshot()
            start = cut
        if not todo:
            break
        add(batch, slice(start, None))
    return out


def unit_scores(directions: torch.Tensor, centre: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every unit's token score [n, d] -> [n, K]: centred cosine with each direction (``centre`` given), else h·e."""
    return lambda a: token_vectors(a, centre) @ directions.T


# -----------------------------------------------------------------------------
# one layer, every method, every concept

def evaluate_layer(train: RowActivations, latent: RowActivations, layer: int, splits: list[ConceptSplit], *,
                   methods: Sequence[str] = ("ep", "diffmean", "probe", "random", "length"),
                   dictionaries: Mapping[str, object] | None = None, bases: Sequence[str] = BASES,
                   scope: str = "after_prefix", train_scope: str = "row", choose: str = "contrast",
                   score: str = "dot", n_random: int = 3, sae_encode: Callable | None = None,
                   sae_canonical: dict[int, int] | None = None, seed: int = 0, progress: bool = True,
                   cache: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Choose every method's detector on ``train`` and score it on ``latent`` at ``layer``.

    The defaults are the paper's protocol (module docstring); ``scope`` (tokens max-pooled at evaluation),
    ``train_scope`` (tokens the choosers see), ``choose`` (``contrast`` or ``auroc``) and ``score`` (``dot`` or
    ``cos``: how the chosen EP direction scores a token) give the controls. ``dictionaries`` ({name: Dictionary},
    needed for ``ep``) give methods ``ep_{name}_{basis}``. SAE methods need ``sae_encode`` ([n, d] -> [n, F]):
    ``sae_a`` is the feature with the best training AUROC, ``sae`` the feature ``sae_canonical`` names per
    concept (AxBench's Neuronpedia reference). ``cache`` (a dict the caller keeps, for one ``train``) holds the
    EP and DiffMean tables that do not depend on the splits, so a rerun on resampled splits (``seed_spread``)
    skips them.

    Returns a DataFrame (one row per method × concept: ``method, concept_id, layer, scope, auroc, train_score,
    unit``; ``train_score`` is the chosen unit's contrast or training AUROC) and an info dict: ``seconds`` per
    method, ``pooled`` ({method: per split the max-pooled scores of every evaluation row}).
    """
    for name, value, allowed in (("scope", scope, SCOPES), ("train_scope", train_scope, SCOPES),
                                 ("choose", choose, ("contrast", "auroc")), ("score", score, ("dot", "cos"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if "ep" in methods and not dictionaries:
        raise ValueError("method 'ep' needs dictionaries={name: Dictionary} (e.g. from ep.build on a corpus)")
    cache = {} if cache is None else cache
    xa, xe = train.acts[layer], latent.acts[layer]
    ktr, kev = train.keep(train_scope), latent.keep(scope)
    chosen: dict[str, list] = {}  # method -> per split (detector, training score, unit)
    pooled_rows: dict[str, list] = {}  # method -> per split the row scores [eval rows] AUROC was taken on
    seconds: dict[str, float] = {}
    rows = []
    for method in tqdm(methods, desc=f"layer {layer}", disable=not progress):
        t = time.perf_counter()
        if method == "ep":
            for name, dic in dictionaries.items():
                for b in bases:
                    t = time.perf_counter()
                    directions, centre = dic.basis(b), (dic.centre if score == "cos" else None)
                    key = (layer, id(dic), b, train_scope, choose, score)
                    if key not in cache:  # the per-row tables the choice needs, the same for every concept
                        if choose == "contrast":  # the paper: centred cosine, mean over tokens
                            cache[key] = unit_row_sums(directions, dic.centre, xa, train.row, ktr, train.n_rows)
                        else:  # control: max-pooled training AUROC of the detector itself
                            cache[key] = unit_row_scores(unit_scores(directions, centre), xa, train.row, ktr,
                                                         train.n_rows)
                    picks = contrast_units(*cache[key], splits) if choose == "contrast" else best_units(cache[key],
                                                                                                         splits)
                    chosen[f"ep_{name}_{b}"] = [(LinearDetector(directions[k], centre), v, k) for k, v in picks]
                    seconds[f"ep_{name}_{b}"] = time.perf_counter() - t
        elif method == "diffmean":
            key = ("row sums", layer, train_scope)
            if key not in cache:  # the same for every concept and every redraw
                cache[key] = row_sums(xa, train.row, ktr, train.n_rows)
            chosen[method] = [(diffmean(*cache[key], s), np.nan, -1) for s in splits]
            seconds[method] = time.perf_counter() - t
        elif method == "probe":
            chosen[method] = [(probe(xa, train, ktr, s), np.nan, -1) for s in splits]
            seconds[method] = time.perf_counter() - t
        elif method == "random":
            for r in range(n_random):
                chosen[f"random_{r}"] = [(random_detector(xa.shape[1], seed + r), np.nan, -1)] * len(splits)
        elif method == "length":
            lengths = latent.lengths(scope)
            rows += [_record("length", s, layer, scope, auroc(s.eval_labels, lengths[s.eval_rows]))
                     for s in splits]
            pooled_rows["length"] = [lengths] * len(splits)
        elif method == "sae":
            if sae_encode is None:
                continue  # no SAE available: the caller says why
            scores = unit_row_scores(sae_encode, xa, train.row, ktr, train.n_rows, chunk_size=512)
            # every feature's max-pooled evaluation scores at once [eval rows, F]: one encoder pass, not one a concept
            pooled_all = unit_row_scores(sae_encode, xe, latent.row, kev, latent.n_rows, chunk_size=512)
            chosen["sae_a"] = [(pooled_all[:, k], a, k) for k, a in best_units(scores, splits)]
            seconds["sae_a"] = time.perf_counter() - t
            if sae_canonical:
                chosen["sae"] = [(pooled_all[:, sae_canonical[s.concept_id]], np.nan, sae_canonical[s.concept_id])
                                 for s in splits]
        else:
            raise ValueError(f"unknown method {method!r}")
    for method, per_split in chosen.items():  # score every chosen detector on the evaluation rows
        pooled = pooled_scores([detector for detector, _, _ in per_split], xe, latent, kev)
        pooled_rows[method] = pooled
        for split, (_, train_score, unit), p in zip(splits, per_split, pooled, strict=True):
            rows.append(_record(method, split, layer, scope, auroc(split.eval_labels, p[split.eval_rows]),
                                train_score, unit))
    return _merge_random(pd.DataFrame.from_records(rows)), {"seconds": seconds, "pooled": pooled_rows}


def pooled_scores(detectors: list, acts: torch.Tensor, rows: RowActivations, keep: torch.Tensor
                  ) -> list[np.ndarray]:
    """Each detector's max-pooled row scores [n_rows] (a tensor stands for scores already pooled). Linear
    detectors that share a centre are scored in one matrix product, the tokens centred once, and a detector
    listed for several concepts (a random direction) is scored once."""
    unique = {id(d): d for d in detectors}
    out = {k: d.numpy() for k, d in unique.items() if isinstance(d, torch.Tensor)}
    linear = [d for d in unique.values() if isinstance(d, LinearDetector)]
    for centre in {id(d.centre): d.centre for d in linear}.values():
        group = [d for d in linear if d.centre is centre]
        x = token_vectors(acts, centre)
        w = torch.stack([d.direction.float() for d in group], 1)  # [d, G]
        scores = x @ w + torch.tensor([d.bias for d in group], dtype=torch.float32)
        pooled = max_pool(scores, rows.row, keep, rows.n_rows).numpy()  # [n_rows, G]
        out |= {id(d): pooled[:, j] for j, d in enumerate(group)}
    for k, d in unique.items():  # any other callable [N, d] -> [N]
        if k not in out:
            out[k] = max_pool(d(acts), rows.row, keep, rows.n_rows).numpy()
    return [out[id(d)] for d in detectors]


def _merge_random(results: pd.DataFrame) -> pd.DataFrame:
    """The random floor: random_0, random_1, ... become one method ``random``, the mean over seeds per concept."""
    rnd = results.method.str.startswith("random_")
    if rnd.any():
        mean = results[rnd].groupby(["concept_id", "layer", "scope"], as_index=False).auroc.mean()
        results = pd.concat([results[~rnd], mean.assign(method="random", train_score=np.nan, unit=-1)])
    return results.reset_index(drop=True)


def _record(method, split, layer, scope, value, train_score=np.nan, unit=-1) -> dict:
    return {"method": method, "concept_id": split.concept_id, "layer": layer, "scope": scope,
            "auroc": value, "train_score": train_score, "unit": unit}


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean (and spread) of the per-concept AUROC for each method, best first."""
    g = results.groupby("method").auroc
    return pd.DataFrame({"mean_auroc": g.mean(), "std": g.std(), "min": g.min(), "n_concepts": g.size()}
                        ).sort_values("mean_auroc", ascending=False)


def seed_spread(train: RowActivations, latent: RowActivations, layer: int, splits: list[ConceptSplit], *,
                n_boot: int = 20, seed: int = 0, rows: str = "both",
                methods: Sequence[str] = ("ep", "diffmean", "random", "length"), progress: bool = True,
                cache: dict | None = None, **options) -> pd.DataFrame:
    """How far the mean AUROC moves with another draw of rows of the same size: ``n_boot`` bootstrap redraws
    (``resample``) of every concept's evaluation rows (``rows="eval"``) or training and evaluation rows
    (``"both"``), each run through ``evaluate_layer`` with ``options``.
    With ``rows="eval"`` the choices do not change, so every method is chosen and scored once and only the
    AUROCs are redrawn. → DataFrame (``boot``, ``method``, ``mean_auroc``): one mean over concepts per redraw."""
    cache = {} if cache is None else cache
    out = []
    if rows == "eval":
        base, info = evaluate_layer(train, latent, layer, splits, methods=methods, seed=seed, progress=False,
                                    cache=cache, **options)
    for i in tqdm(range(n_boot), desc=f"redraws ({rows})", disable=not progress):
        redrawn = resample(splits, seed + i, rows)
        if rows == "eval":
            results = _merge_random(pd.DataFrame.from_records([
                _record(m, s, layer, "", auroc(s.eval_labels, scores[s.eval_rows]))
                for m, per_split in info["pooled"].items() for s, scores in zip(redrawn, per_split, strict=True)]))
        else:
            results, _ = evaluate_layer(train, latent, layer, redrawn, methods=methods, seed=seed, progress=False,
                                        cache=cache, **options)
        out += [{"boot": i, "method": m, "mean_auroc": v} for m, v in summary(results).mean_auroc.items()]
    return pd.DataFrame.from_records(out)
