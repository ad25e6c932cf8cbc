"""AxBench latent concept detection: rows → per-token activations → max-pooled detector scores → AUROC.

AxBench (Wu et al., 2025) asks whether a one-number-per-token *detector* tells rows that express a
concept (positives) from rows that do not (negatives). The protocol, as its evaluator runs it:
- each row is chat-templated (user = ``input``, assistant = ``output``) and run through the model;
  the activations at one layer are read for every token except BOS;
- a detector scores every token; a row's score is the **max** over its tokens (by default only the
  tokens of the assistant's output, ``scope="output"``; ``scope="row"`` uses the whole row);
- per concept, AUROC of the row scores on positives vs negatives (hard negatives are excluded, as
  AxBench's ``AUCROCEvaluator`` drops every category it has no label for); then the mean over concepts.

Every detector here is chosen on the training split only:
- EP: one dictionary (``ep.calibrate`` + ``ep.build_dictionary``) shared by all concepts; per concept
  the region whose exemplar e gives the best *training* AUROC, scored h·e or by centred cosine;
- SAE: the same chooser over SAE features (the "SAE-A" of AxBench), when an SAE is available;
- DiffMean (mean positive token − mean negative token), a logistic-regression probe, random directions.
Row length (``RowActivations.lengths``) is the control to read every number against: positives are longer.

Layout: templating and extraction (model code) at the top; everything below works on plain arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from ..method.builder import build_dictionary
from ..method.calibration import calibrate, to_directions
from ..method.metrics import auroc, auroc_columns
from ..model.activations import ActivationBatch, decoder_layers
from ..model.chat import chat_prompt

LABELS = {"positive": 1, "negative": 0}  # everything else (hard negatives) is left out, as in AxBench


# -----------------------------------------------------------------------------
# rows → templated text → per-token activations (the only part that touches a model)

def template_row(tokenizer, prompt: str, output: str) -> tuple[str, tuple[int, int]]:
    """One AxBench row as a chat turn → (text without BOS, character span of the output in it).

    Uses the tokenizer's own chat template when it has one (e.g. ``google/gemma-2-2b-it``), else Gemma's
    turn markup (``ep.model.chat.chat_prompt``, the same text). Both are stripped, as the Gemma template trims them.
    """
    output = output.strip()
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        text = chat_prompt(prompt, output)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos):]  # BOS is added (once) by the tokenizer
    start = text.rfind(output)
    if start < 0:
        raise ValueError("the chat template changed the output text: cannot locate it")
    return text, (start, start + len(output))


@dataclass
class RowActivations:
    """Per-token activations of a table of rows, every real token except BOS, rows concatenated."""

    acts: dict[int, torch.Tensor]  # layer -> [N, d] float32
    row: torch.Tensor  # [N] int64, index of the token's row
    output: torch.Tensor  # [N] bool, token lies inside the assistant's output
    token: torch.Tensor  # [N] int64 token ids
    n_rows: int

    def keep(self, scope: str) -> torch.Tensor:
        """[N] bool: the tokens a detector is max-pooled over (``output`` or the whole ``row``)."""
        if scope == "output":
            return self.output
        if scope == "row":
            return torch.ones_like(self.output)
        raise ValueError(f"scope must be 'output' or 'row', got {scope!r}")

    def lengths(self, scope: str = "output") -> np.ndarray:
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
    texts, spans = zip(*(template_row(tok, r.input, r.output) for r in frame.itertuples()), strict=True)
    # batch rows of similar length together (less padding); every token keeps its row's index
    order = np.argsort([len(ids) for ids in tok(list(texts))["input_ids"]], kind="stable")
    out = {layer: [] for layer in layers}
    rows, is_out, ids_all = [], [], []
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
        start, end = offsets[b, t, 0], offsets[b, t, 1]
        is_out.append((start >= span[b, 0]) & (end <= span[b, 1]) & (end > start))
        rows.append(torch.as_tensor(batch)[b])
        ids_all.append(ids[b, t])
    rows = torch.cat(rows)
    back = torch.argsort(rows, stable=True)  # back to the frame's row order, tokens in sequence
    return RowActivations({layer: torch.cat(a)[back] for layer, a in out.items()}, rows[back],
                          torch.cat(is_out)[back], torch.cat(ids_all)[back], len(texts))


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


# -----------------------------------------------------------------------------
# detectors and pooling (plain arrays from here on)

@dataclass
class LinearDetector:
    """Token score h·w + b, or the centred cosine ((h − c)/‖h − c‖)·w when ``centre`` is set."""

    direction: torch.Tensor  # [d]
    centre: torch.Tensor | None = None  # [d]
    bias: float = 0.0

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:  # [N, d] -> [N]
        x = to_directions(acts, self.centre) if self.centre is not None else acts.float()
        return x @ self.direction.float() + self.bias


@dataclass
class FeatureDetector:
    """One feature of an encoder (e.g. an SAE's: [n, d] -> [n, F]), encoded in chunks to bound memory."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    index: int
    chunk_size: int = 1024

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encode(acts[s:s + self.chunk_size])[:, self.index].float()
                          for s in range(0, len(acts), self.chunk_size)])


def max_pool(scores: torch.Tensor, row: torch.Tensor, keep: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Token scores [N] or [N, K] → per-row max over the kept tokens [n_rows] or [n_rows, K].

    A row with no kept token (e.g. its output was truncated away) gets the minimum score seen.
    """
    s = scores[keep].float()
    index = row[keep].reshape(-1, *([1] * (s.ndim - 1))).expand_as(s)
    out = s.new_full((n_rows, *s.shape[1:]), float("-inf")).scatter_reduce_(0, index, s, "amax")
    return out.nan_to_num(neginf=float(s.min()) if s.numel() else 0.0)


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


def best_units(row_scores: torch.Tensor, splits: list[ConceptSplit]) -> list[tuple[int, float]]:
    """Per concept, the unit (column of the training rows' max-pooled scores [n_rows, K]) with the best
    training AUROC, and that AUROC; ties (common with few rows) go to the larger mean score gap between
    positive and negative rows. This is how EP regions and SAE features (SAE-A) are chosen."""
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

def _token_labels(rows: RowActivations, split: ConceptSplit) -> torch.Tensor:
    """[N] each token's row label for this concept: 1, 0, or -1 (row not in the concept's training set)."""
    label = torch.full((rows.n_rows,), -1)
    label[split.train_rows] = torch.as_tensor(split.train_labels)
    return label[rows.row]


def diffmean(acts: torch.Tensor, rows: RowActivations, keep: torch.Tensor, split: ConceptSplit) -> LinearDetector:
    """Mean of the positive rows' tokens minus mean of the negative rows' tokens (normalised), score h·w."""
    lab = _token_labels(rows, split)
    w = acts[keep & (lab == 1)].mean(0) - acts[keep & (lab == 0)].mean(0)
    return LinearDetector(w / w.norm())


def probe(acts: torch.Tensor, rows: RowActivations, keep: torch.Tensor, split: ConceptSplit,
          C: float = 0.1, max_iter: int = 300) -> LinearDetector:
    """Logistic regression on tokens (label = its row's), standardised features, balanced classes."""
    lab = _token_labels(rows, split)
    sel = keep & (lab >= 0)
    x, y = acts[sel].double().numpy(), lab[sel].numpy()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced").fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd  # undo the standardisation: a plain linear score on raw h
    return LinearDetector(torch.as_tensor(w, dtype=torch.float32), bias=float(clf.intercept_[0] - w @ mu))


def random_detector(d: int, seed: int) -> LinearDetector:
    """A random unit direction, score h·r: the floor every method should clear."""
    w = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return LinearDetector(w / w.norm())


def ep_dictionary(train: RowActivations, layer: int, percentile: float, seed: int = 0):
    """The EP dictionary of every training token at ``layer`` (no labels: one dictionary for all concepts).

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


def ep_unit_scores(dictionary, centred: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every region's score for tokens [n, d] -> [n, K]: centred cosine with each exemplar, or plain h·e."""
    ex = dictionary.exemplars  # [K, d] centred unit vectors
    if centred:
        return lambda a: to_directions(a, dictionary.centre) @ ex.T
    return lambda a: a.float() @ ex.T


# -----------------------------------------------------------------------------
# one layer, every method, every concept

def evaluate_layer(train: RowActivations, latent: RowActivations, layer: int, splits: list[ConceptSplit], *,
                   methods: Sequence[str] = ("ep", "diffmean", "probe", "random", "length"),
                   percentiles: Sequence[float] = (1.0,), scope: str = "output", n_random: int = 3,
                   sae_encode: Callable | None = None, sae_canonical: dict[int, int] | None = None,
                   dictionaries: dict | None = None, seed: int = 0, progress: bool = True
                   ) -> tuple[pd.DataFrame, dict]:
    """Choose every method's detector on ``train`` and score it on ``latent`` at ``layer``.

    Returns a DataFrame (one row per method × concept: ``method, concept_id, layer, scope, auroc,
    train_auroc, unit``) and an info dict (``seconds``: build time per method; ``dictionaries``).
    EP methods are ``ep_p{p}_cos`` (centred cosine) and ``ep_p{p}_dot`` (h·e). SAE methods need
    ``sae_encode`` ([n, d] -> [n, F]): ``sae_a`` is the best feature by training AUROC, ``sae`` the
    feature ``sae_canonical`` names per concept (AxBench's Neuronpedia reference). EP dictionaries
    are label-free, so ``dictionaries`` ({percentile: Dictionary}) from an earlier call are reused.
    """
    xa, xe = train.acts[layer], latent.acts[layer]
    ktr, kev = train.keep(scope), latent.keep(scope)
    dictionaries = dict(dictionaries or {})
    chosen: dict[str, list] = {}  # method -> per split (detector, train AUROC, unit)
    seconds: dict[str, float] = {}
    rows = []
    for method in tqdm(methods, desc=f"layer {layer}", disable=not progress):
        t = time.perf_counter()
        if method == "ep":
            for p in percentiles:
                if p not in dictionaries:
                    t = time.perf_counter()
                    dictionaries[p] = ep_dictionary(train, layer, p, seed)
                    seconds[f"ep_p{p:g} dictionary"] = time.perf_counter() - t
                dic = dictionaries[p]
                for centred, tag in ((True, "cos"), (False, "dot")):
                    t = time.perf_counter()
                    scores = unit_row_scores(ep_unit_scores(dic, centred), xa, train.row, ktr, train.n_rows)
                    centre = dic.centre if centred else None
                    chosen[f"ep_p{p:g}_{tag}"] = [(LinearDetector(dic.exemplars[k], centre), a, k)
                                                  for k, a in best_units(scores, splits)]
                    seconds[f"ep_p{p:g}_{tag}"] = time.perf_counter() - t
        elif method in ("diffmean", "probe"):
            fit = diffmean if method == "diffmean" else probe
            chosen[method] = [(fit(xa, train, ktr, s), np.nan, -1) for s in splits]
            seconds[method] = time.perf_counter() - t
        elif method == "random":
            for r in range(n_random):
                chosen[f"random_{r}"] = [(random_detector(xa.shape[1], seed + r), np.nan, -1)] * len(splits)
        elif method == "length":
            lengths = latent.lengths(scope)
            rows += [_record("length", s, layer, scope, auroc(s.eval_labels, lengths[s.eval_rows]))
                     for s in splits]
        elif method == "sae":
            if sae_encode is None:
                continue  # no SAE available: the caller says why
            scores = unit_row_scores(sae_encode, xa, train.row, ktr, train.n_rows, chunk_size=512)
            chosen["sae_a"] = [(FeatureDetector(sae_encode, k), a, k) for k, a in best_units(scores, splits)]
            seconds["sae_a"] = time.perf_counter() - t
            if sae_canonical:
                chosen["sae"] = [(FeatureDetector(sae_encode, sae_canonical[s.concept_id]), np.nan,
                                  sae_canonical[s.concept_id]) for s in splits]
        else:
            raise ValueError(f"unknown method {method!r}")
    for method, per_split in chosen.items():  # score every chosen detector on the evaluation rows
        for split, (detector, train_auroc, unit) in zip(splits, per_split, strict=True):
            pooled = max_pool(detector(xe), latent.row, kev, latent.n_rows).numpy()
            rows.append(_record(method, split, layer, scope, auroc(split.eval_labels, pooled[split.eval_rows]),
                                train_auroc, unit))
    results = pd.DataFrame.from_records(rows)
    rnd = results.method.str.startswith("random_")
    if rnd.any():  # the random floor: mean over seeds, per concept
        mean = results[rnd].groupby(["concept_id", "layer", "scope"], as_index=False).auroc.mean()
        results = pd.concat([results[~rnd], mean.assign(method="random", train_auroc=np.nan, unit=-1)])
    return results.reset_index(drop=True), {"seconds": seconds, "dictionaries": dictionaries}


def _record(method, split, layer, scope, value, train_auroc=np.nan, unit=-1) -> dict:
    return {"method": method, "concept_id": split.concept_id, "layer": layer, "scope": scope,
            "auroc": value, "train_auroc": train_auroc, "unit": unit}


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean (and spread) of the per-concept AUROC for each method, best first."""
    g = results.groupby("method").auroc
    return pd.DataFrame({"mean_auroc": g.mean(), "std": g.std(), "min": g.min(), "n_concepts": g.size()}
                        ).sort_values("mean_auroc", ascending=False)
