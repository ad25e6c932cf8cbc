"""Checked exercises: a learner's function run against the reference on fresh random inputs.

Each notebook poses a few exercises at the moments that matter (the spherical centre, θ as a
percentile, the leader rule, ...). The learner writes a small function; ``check(name, fn)`` calls it
and the reference on the exercise's edge cases (exact ties at θ, a region of one member, ...) and on
freshly drawn inputs, and prints either a pass or the smallest failing input it can find, what was
expected, what came back and, when the answer is a known mistake, which one in words. It never raises, so
a wrong answer never stops the notebook. ``checked(name, fn)`` checks and returns the function the notebook goes
on with: the learner's own when it passes (01 and 02 build a dictionary from the learner's parts), else the worked
solution, saying so. ``check(..., seed=S)`` replays the inputs of a printed seed. Two exercises write nnsight code
(save a block's output; an edit inside generation): they take the notebook's model, ``check(..., model=model)``.

    >>> import numpy as np
    >>> check("membership_f1", lambda a, b: 2 * len(set(a) & set(b)) / (len(set(a)) + len(set(b))))
    ✓ membership_f1: matches the reference on 0 edge cases and 6 random inputs
    True

Every exercise is an ``Exercise``: how to draw inputs, the fixed edge cases that separate right from
nearly right, the reference (``ep``'s own implementation wherever one exists, so there is one
definition), how to compare, and the plausible mistakes, each named as the learner should read it; the
edge cases make every listed mistake fail every call (tests check it). Inputs and outputs are numpy arrays.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .method.builder import saturation_stop
from .method.calibration import document_batches, percentile_threshold, spherical_centre, to_directions
from .method.leader import leader_cluster_reference
from .model.activations import decoder_layers, token_activations
from .model.generation import greedy
from .model.interventions import diff_in_means, project_out
from .studies.ood import coverage_stats, in_vs_out_auroc, per_document
from .studies.stability import resolution_parents
from .studies.steering import Steer, toward_exemplar


@dataclass(frozen=True)
class Exercise:
    name: str
    notebook: str                                 # where it is posed, e.g. "01"
    summary: str                                  # one line: what to write
    inputs: Callable[[np.random.Generator], tuple]  # fresh arguments for one trial
    reference: Callable[..., object]
    wrong: dict[str, Callable[..., object]] = field(default_factory=dict)  # known mistakes, named for the learner
    edge: Callable[[], list[tuple]] = lambda: []  # inputs every call tries first (ties at θ, tiny regions, ...)
    rtol: float = 1e-5
    atol: float = 1e-6
    needs_model: bool = False  # inputs(rng, model); the model is the first argument of the learner's function


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _acts(rng: np.random.Generator, n: int | None = None, d: int | None = None) -> np.ndarray:
    """Activation-like rows [n, d]: a large shared offset plus a few big and many small directions."""
    n, d = n or int(rng.integers(40, 120)), d or int(rng.integers(6, 24))
    offset = rng.normal(size=d) * 4.0
    return (offset + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)).astype(np.float64)


# -----------------------------------------------------------------------------
# references that are not a single ep call (each is the definition, in a few lines)

def _theta(u: np.ndarray, p: float) -> float:
    """θ: the p-th percentile of cosine distances 1 − u_i·u_j over distinct pairs i < j."""
    i, j = np.triu_indices(len(u), k=1)
    return float(np.percentile(1.0 - np.einsum("nd,nd->n", u[i], u[j]), p))


def _assign(u: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Voronoi cell of each unit row: the most similar exemplar (ties: the lowest id)."""
    return np.argmax(u @ exemplars.T, axis=1)


def _nearest_distance(acts: np.ndarray, centre: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """OOD score: cosine distance from each centred, normalised row to its nearest exemplar."""
    return 1.0 - (_np(to_directions(acts, centre)).astype(np.float64) @ exemplars.T).max(axis=1)


def _coherence(members: np.ndarray) -> float:
    """||Σ u|| / n over a region's unit member directions: 1 when all agree, ~1/sqrt(n) when random."""
    return float(np.linalg.norm(members.sum(axis=0)) / len(members))


def _most_coherent(counts: np.ndarray, coherence: np.ndarray, n: int, min_members: int) -> np.ndarray:
    """The n most coherent regions among those with at least min_members members, most coherent first."""
    eligible = np.flatnonzero(counts >= min_members)
    return eligible[np.argsort(-coherence[eligible], kind="stable")[:n]]


def _place_tokens(acts: np.ndarray, centre: np.ndarray, exemplars: np.ndarray, theta: float) -> np.ndarray:
    """Each raw row's region (the nearest exemplar in centred cosine, ties: the lowest id), or -1 where even the
    nearest exemplar is farther than θ: in the stream, that token would have founded a new region."""
    x = acts - centre
    sim = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ exemplars.T
    region = np.argmax(sim, axis=1)
    return np.where(1.0 - sim.max(axis=1) > theta, -1, region)


def _hungarian(cos: np.ndarray, cutoff: float) -> set[tuple[int, int]]:
    """One-to-one pairs maximising the total cosine, kept where cosine >= cutoff."""
    rows, cols = linear_sum_assignment(-cos)
    return {(int(r), int(c)) for r, c in zip(rows, cols) if cos[r, c] >= cutoff}


def _membership_f1(a, b) -> float:
    """F1 (= Dice) of two sets of token ids: 2|A ∩ B| / (|A| + |B|)."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 0.0


def _top_set(scores: np.ndarray, k: int) -> set[int]:
    """The k highest-scoring tokens among those with a positive score (fewer if fewer are positive)."""
    pos = np.flatnonzero(scores > 0)
    return set(pos[np.argsort(-scores[pos], kind="stable")[:k]].tolist())


def _histogram(texts: list[np.ndarray], basis: np.ndarray) -> np.ndarray:
    """Probe feature at l0 = 1: each token one-hot at its nearest region, averaged over the text. -> [n, K]"""
    out = np.zeros((len(texts), len(basis)))
    for i, u in enumerate(texts):
        out[i] = np.bincount(_assign(u, basis), minlength=len(basis)) / len(u)
    return out


def _max_pooled(acts: np.ndarray, prefix: int, direction: np.ndarray) -> float:
    """AxBench score of one row: max over the tokens after the chat prefix of h · e."""
    return float((acts[prefix:] @ direction).max())


def _concept_region(pos_cos: np.ndarray, neg_cos: np.ndarray) -> int:
    """The region whose centred cosine is highest on positives relative to negatives."""
    return int(np.argmax(pos_cos.mean(axis=0) - neg_cos.mean(axis=0)))


def _mini_build(calib: np.ndarray, stream: np.ndarray, p: float, centred: bool = True,
                theta_from: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary from scratch: centre and θ frozen on calib, the leader rule over the stream, then the cells.
    (``centred=False`` and ``theta_from`` make two of the exercise's known mistakes.)"""
    centre = _np(spherical_centre(calib)).astype(np.float64) if centred else np.zeros(calib.shape[1])
    theta = _theta(_np(to_directions(calib if theta_from is None else theta_from, centre)).astype(np.float64), p)
    u = _np(to_directions(stream, centre)).astype(np.float64)
    exemplars = np.asarray(leader_cluster_reference(u, theta))
    return exemplars, _assign(u, u[exemplars])


def _at_arrival(calib: np.ndarray, stream: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """The mini-build's mistake: each token kept in the region it joined at arrival, not its final Voronoi cell."""
    centre = _np(spherical_centre(calib)).astype(np.float64)
    theta = _theta(_np(to_directions(calib, centre)).astype(np.float64), p)
    u = _np(to_directions(stream, centre)).astype(np.float64)
    exemplars: list[int] = []
    region = np.zeros(len(u), dtype=np.int64)
    for i, x in enumerate(u):
        sim = u[exemplars] @ x if exemplars else np.zeros(0)
        if not exemplars or 1 - sim.max() > theta:
            exemplars.append(i)
            region[i] = len(exemplars) - 1
        else:
            region[i] = int(np.argmax(sim))
    return np.array(exemplars), region


def _theta_by_documents(u: np.ndarray, doc: np.ndarray, p: float, docs_per_batch: int) -> float:
    """θ by the paper's protocol: the mean over batches of ``docs_per_batch`` whole documents (in stream order) of the
    p-th percentile of within-batch pairwise distances (batches of one row skipped)."""
    return percentile_threshold(u.astype(np.float32), p, batches=document_batches(doc, docs_per_batch))


def _theta_pooled(u: np.ndarray, doc: np.ndarray, p: float, docs_per_batch: int) -> float:
    """The mistake: every batch's pairs pooled into one percentile, instead of the mean of the batches' percentiles."""
    pairs = [np.triu_indices(len(b), k=1) for b in document_batches(doc, docs_per_batch)]
    batches = [u[b.numpy()] for b in document_batches(doc, docs_per_batch)]
    return float(np.percentile(np.concatenate([1 - (x[i] * x[j]).sum(1) for x, (i, j) in zip(batches, pairs)]), p))


def _leader_counts(u: np.ndarray, theta: float, nearest_at_arrival: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exemplars and each region's members counted at arrival, with the nearest exemplar so far (the builder's
    counts); ``nearest_at_arrival=False``: with the first exemplar within θ (a mistake)."""
    exemplars = np.asarray(leader_cluster_reference(u, theta))
    counts = np.zeros(len(exemplars), dtype=np.int64)
    for i, x in enumerate(u):
        known = exemplars[exemplars <= i]  # the exemplars so far (a new one counts itself)
        distance = 1 - u[known] @ x
        within = np.flatnonzero(distance <= theta) if nearest_at_arrival else np.flatnonzero(distance <= theta)[:1]
        counts[within[np.argmin(distance[within])] if nearest_at_arrival else within[0]] += 1
    return exemplars, counts


def _final_counts(u: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The mistake: members counted by the final Voronoi cells, not with the nearest exemplar at arrival."""
    exemplars = np.asarray(leader_cluster_reference(u, theta))
    return exemplars, np.bincount(_assign(u, u[exemplars]), minlength=len(exemplars))


def _stop_quiet_in_total(new_per_batch: np.ndarray, window: int) -> int:
    """The mistake: the build stops at the window-th quiet batch, in a row or not."""
    quiet = np.flatnonzero(np.cumsum(new_per_batch == 0) >= window)
    return int(quiet[0]) if len(quiet) else -1


def _stop_batch(new_per_batch: np.ndarray, window: int) -> int:
    """The official stop rule on per-batch counts: the batch that ends the first run of ``window`` batches in a row
    with no new region, or -1 if there is none (``ep.method.builder.saturation_stop``)."""
    n = len(new_per_batch)
    stop = saturation_stop(np.arange(1, n + 1) * 128, np.cumsum(new_per_batch), window, 128)
    return -1 if stop is None else int(stop)


def _coverage(distances: np.ndarray, theta: float) -> np.ndarray:
    """[within-θ rate, mean, median, p90, p99] of nearest-exemplar distances (``ood.coverage_stats``)."""
    c = coverage_stats(distances, theta)
    return np.array([c[k] for k in ("within_threshold_rate", "mean_distance", "median_distance", "p90_distance",
                                    "p99_distance")])


def _refusal_rates(regions: np.ndarray, refused: np.ndarray, n_regions: int, min_members: int) -> np.ndarray:
    """Each region's refusal rate over its members, -1 where it holds fewer than min_members."""
    counts = np.bincount(regions, minlength=n_regions)
    refusals = np.bincount(regions, weights=refused.astype(np.float64), minlength=n_regions)
    return np.where(counts >= min_members, refusals / np.maximum(counts, 1), -1.0)


def _best_cut_split_ties(scores: np.ndarray, labels: np.ndarray) -> float:
    """The mistake: cuts between neighbours in sorted order, so tied scores can fall on both sides."""
    y = labels.astype(bool)[np.argsort(scores, kind="stable")]
    correct = [(~y[:i]).sum() + y[i:].sum() for i in range(len(y) + 1)]
    return float(max(correct) / len(y))


def _best_cut(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best accuracy of the rule "positive iff score > t" over every t (tied scores always on one side)."""
    cuts = np.concatenate([[-np.inf], np.unique(scores)])
    above = scores[None, :] > cuts[:, None]
    return float(((above == labels[None, :].astype(bool)).mean(axis=1)).max())


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside text scores above an inside one), ties counting one half: the Mann-Whitney U / (n_in · n_out)."""
    return float(in_vs_out_auroc(inside, outside))


def _trace_block(model, text: str, layer: int) -> torch.Tensor:
    """Block ``layer``'s output [T, d] for every token of text, BOS included (a plain nnsight trace)."""
    with torch.no_grad(), model.trace(text):
        out = decoder_layers(model)[layer].output.save()
    return out[0].float()


def _layer_output(model, text: str, layer: int) -> np.ndarray:
    """Block ``layer``'s output for each token of text after BOS, float32: what ``ep.token_activations`` streams."""
    return _np(token_activations(model, [text], layer, progress=False).acts)


def _steered_tokens(model, prompt: str, layer: int, vector: np.ndarray, n_new: int, sign: float = 1.0) -> np.ndarray:
    """Greedy new tokens with ``vector`` added to block ``layer``'s output at every position of every step."""
    edit = _AddVector(sign * torch.as_tensor(vector, dtype=torch.float32), (layer,))
    return np.array(greedy(model, [prompt], max_new_tokens=n_new, edit=edit, add_special_tokens=True,
                           progress=False).tokens[0])


def _steered_first_step_only(model, prompt: str, layer: int, vector: np.ndarray, n_new: int) -> np.ndarray:
    """The mistake: the edit made once, outside the loop over generation steps, so only the prompt pass sees it."""
    n_prompt = len(model.tokenizer(prompt)["input_ids"])
    with torch.no_grad(), model.generate(max_new_tokens=n_new, do_sample=False) as tracer:
        with tracer.invoke(prompt):
            block = model.model.layers[layer]
            block.output = block.output + torch.as_tensor(vector).to(block.output)  # its dtype and device
        with tracer.invoke():
            ids = tracer.result.save()
    return _np(ids[0, n_prompt:])


@dataclass
class _AddVector:
    """An edit for ``ep.model.generation.greedy``: hidden + vector at the given blocks."""

    vector: torch.Tensor
    layers: tuple[int, ...]

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return hidden + self.vector.to(hidden.device, hidden.dtype)


# -----------------------------------------------------------------------------
# input generators

def _coherent_inputs(rng: np.random.Generator) -> tuple:
    k, min_members = int(rng.integers(20, 80)), int(rng.integers(2, 7))
    counts = rng.geometric(0.25, size=k)
    coherence = rng.uniform(0.2, 0.95, size=k)
    counts[rng.choice(k, size=3, replace=False)] = [1, min_members, min_members + 1]
    coherence[counts == 1] = 1.0  # a 1-member region is perfectly coherent by definition
    coherence[np.flatnonzero(counts == min_members)[0]] = 0.97  # a region exactly at the cut ranks near the top
    return counts, coherence, int(rng.integers(3, 10)), min_members


# 24 unit vectors in 4-D whose cosines are exactly 0, ±0.5 or ±1: exact ties at θ = 0.5 in float arithmetic
DYADIC = np.concatenate([np.eye(4), -np.eye(4), np.array([[a, b, c, e] for a in (.5, -.5) for b in (.5, -.5)
                                                           for c in (.5, -.5) for e in (.5, -.5)])])

# At θ = 0.5 (60°): 40° joins the exemplar at 0°; 70° opens a region, nearer to 40° (its final cell); 50° is
# within θ of both, nearest to 70°. Counting at arrival, by final cells and by the first exemplar within θ differ.
OVERTAKEN = np.array([[np.cos(a), np.sin(a), 0.0] for a in np.radians([0.0, 40.0, 70.0, 50.0])])

# A mini-build where a token changes region after it arrives: calibrating on ±x, ±y, ±z and z again puts the centre
# on z and θ near 90°; in the plane, 60° joins the exemplar at 0°, then 100° opens a region nearer to it (and to 75°).
AXES = np.concatenate([np.eye(3), -np.eye(3), np.eye(3)[2:]])
MOVED = np.array([[np.cos(a), np.sin(a), 0.0] for a in np.radians([0.0, 60.0, 100.0, 75.0])])


def _place_ties(rng: np.random.Generator) -> tuple:
    """Tokens some of which are exactly θ = 0.5 from their nearest exemplar."""
    while True:
        exemplars = DYADIC[rng.choice(len(DYADIC), size=int(rng.integers(3, 8)), replace=False)]
        tokens = DYADIC[rng.integers(0, len(DYADIC), size=int(rng.integers(20, 40)))]
        if (1 - (tokens @ exemplars.T).max(axis=1) == 0.5).any():
            break
    centre = (rng.integers(3, 7, size=4) * rng.choice([-1, 1], size=4)).astype(np.float64)  # never -2·token
    return centre + 2.0 * tokens, centre, exemplars, 0.5


def _place_inputs(rng: np.random.Generator) -> tuple:
    if rng.random() < 0.5:
        return _place_ties(rng)
    acts = _acts(rng)
    centre = acts.mean(axis=0) * rng.uniform(0.8, 1.0)
    exemplars = _unit(rng.normal(size=(int(rng.integers(3, 10)), acts.shape[1])))
    nearest = 1 - (_unit(acts - centre) @ exemplars.T).max(axis=1)
    return acts, centre, exemplars, float(np.quantile(nearest, rng.uniform(0.3, 0.7)))  # some tokens are new


def _leader_inputs(rng: np.random.Generator) -> tuple:
    if rng.random() < 0.5:  # exact ties at θ
        return DYADIC[rng.permutation(len(DYADIC))][: int(rng.integers(8, len(DYADIC)))], 0.5
    u = _unit(rng.normal(size=(int(rng.integers(30, 80)), int(rng.integers(3, 8)))))
    return u, float(rng.uniform(0.3, 1.2))


def _assign_inputs(rng: np.random.Generator) -> tuple:
    d = int(rng.integers(3, 10))
    return _unit(rng.normal(size=(int(rng.integers(20, 60)), d))), _unit(rng.normal(size=(int(rng.integers(3, 12)), d)))


def _ood_inputs(rng: np.random.Generator) -> tuple:
    acts = _acts(rng)
    centre = acts.mean(axis=0) * rng.uniform(0.8, 1.0)
    return acts, centre, _unit(rng.normal(size=(int(rng.integers(3, 10)), acts.shape[1])))


def _removal_inputs(rng: np.random.Generator) -> tuple:
    acts = _acts(rng)
    return acts, _unit(rng.normal(size=acts.shape[1])), acts.mean(axis=0) + rng.normal(size=acts.shape[1])


def _removal_inputs_no_e(rng: np.random.Generator) -> tuple:
    acts, _, centre = _removal_inputs(rng)
    return acts, centre


def _two_sets_inputs(rng: np.random.Generator) -> tuple:
    a = rng.choice(200, size=int(rng.integers(5, 40)), replace=False)
    b = np.concatenate([rng.choice(a, size=int(rng.integers(0, len(a))), replace=False),
                        rng.choice(np.arange(200, 300), size=int(rng.integers(1, 20)), replace=False)])
    return a, b


def _cos_matrix_inputs(rng: np.random.Generator) -> tuple:
    d = 6
    a, b = _unit(rng.normal(size=(int(rng.integers(3, 9)), d))), _unit(rng.normal(size=(int(rng.integers(3, 9)), d)))
    return a @ b.T, float(rng.uniform(0.0, 0.6))


def _top_set_inputs(rng: np.random.Generator) -> tuple:
    scores = rng.normal(size=int(rng.integers(30, 200))) - rng.uniform(0, 1.5)
    return scores, int(rng.integers(3, 40))


def _histogram_inputs(rng: np.random.Generator) -> tuple:
    d, k = int(rng.integers(3, 8)), int(rng.integers(2, 8))
    texts = [_unit(rng.normal(size=(int(rng.integers(1, 15)), d)) + 0.5) for _ in range(int(rng.integers(3, 8)))]
    return texts, _unit(rng.normal(size=(k, d)))


def _max_pooled_inputs(rng: np.random.Generator) -> tuple:
    acts = _acts(rng, n=int(rng.integers(10, 40)))
    direction = _unit(rng.normal(size=acts.shape[1]))
    acts[: 3] += 20 * direction  # the prefix scores high: including it is a visible mistake
    return acts, 3, direction


def _concept_inputs(rng: np.random.Generator) -> tuple:
    k = int(rng.integers(4, 20))
    base = rng.uniform(-0.2, 0.6, size=k)
    neg = base * rng.uniform(0.2, 1.5, size=k) + rng.normal(0, 0.1, size=(25, k))
    return base + rng.normal(0, 0.1, size=(20, k)), neg


def _mini_build_inputs(rng: np.random.Generator) -> tuple:
    """Clustered activation-like rows: a calibration sample, then a stream from the same clusters."""
    d, k = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    offset, centres = rng.normal(size=d) * 4.0, rng.normal(size=(k, d)) * 2.0
    draw = lambda n: offset + centres[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * 0.6  # noqa: E731
    return draw(int(rng.integers(20, 40))), draw(int(rng.integers(30, 60))), float(rng.choice([5.0, 10.0, 20.0]))


def _documents_inputs(rng: np.random.Generator) -> tuple:
    n_docs, d = int(rng.integers(3, 12)), int(rng.integers(3, 8))
    sizes = rng.integers(1, 9, size=n_docs)
    sizes[0] = max(sizes[0], 2)  # the first batch holds a pair at least: θ is defined
    sizes[-1] = 1  # a last batch of one row, when docs_per_batch divides n_docs - 1: skipped
    doc = np.repeat(np.arange(n_docs), sizes)
    u = _unit(rng.normal(size=(n_docs, d))[doc] * 2 + rng.normal(size=(len(doc), d)))
    return u, doc, float(rng.choice([5.0, 10.0, 25.0])), int(rng.integers(1, 4))


def _stop_inputs(rng: np.random.Generator) -> tuple:
    n = int(rng.integers(4, 25))
    new = rng.geometric(0.3, size=n) * (rng.random(n) < 0.6)  # some quiet batches
    return new, int(rng.integers(1, 4))


def _coverage_inputs(rng: np.random.Generator) -> tuple:
    distances = np.round(rng.gamma(2.0, 0.15, size=int(rng.integers(5, 80))), 2)
    return distances, float(rng.choice(distances))  # θ equal to some distances: ties at θ


def _rates_inputs(rng: np.random.Generator) -> tuple:
    n_regions, min_members = int(rng.integers(4, 15)), int(rng.integers(2, 6))
    regions = rng.integers(0, n_regions - 1, size=int(rng.integers(20, 80)))  # the last region has no member
    regions[:min_members] = 0  # region 0 holds exactly min_members ...
    regions[min_members:][regions[min_members:] == 0] = 1
    regions[min_members:2 * min_members - 1] = n_regions - 2 if n_regions > 3 else 1  # ... and some region fewer
    return regions, rng.random(len(regions)) < 0.4, n_regions, min_members


def _document_inputs(rng: np.random.Generator) -> tuple:
    doc = np.sort(rng.integers(0, int(rng.integers(2, 10)), size=int(rng.integers(5, 60))))
    return rng.gamma(2.0, 0.2, size=len(doc)), np.unique(doc, return_inverse=True)[1] * 3  # ids 0, 3, 6, ...


def _best_cut_inputs(rng: np.random.Generator) -> tuple:
    n = int(rng.integers(10, 60))
    labels = rng.random(n) < 0.5
    scores = np.round(labels * rng.uniform(0.2, 1.5) + rng.normal(size=n), 1)  # rounded: tied scores
    return scores, labels


def _auroc_inputs(rng: np.random.Generator) -> tuple:
    inside = np.round(rng.gamma(2.0, 0.2, size=int(rng.integers(3, 30))), 2)
    return inside, np.round(rng.gamma(2.0, 0.2, size=int(rng.integers(3, 30))) + rng.uniform(0, 0.4), 2)


WORDS = ("the river city old light paper sound music water stone north garden king two seven market "
         "winter song bridge school").split()


def _text_inputs(rng: np.random.Generator, model) -> tuple:
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))).capitalize() + "."
    return text, int(rng.integers(1, min(10, len(decoder_layers(model)))))


def _steered_inputs(rng: np.random.Generator, model) -> tuple:
    prompt, layer = _text_inputs(rng, model)
    d = int(model.config.hidden_size)
    vector = rng.normal(size=d)
    return prompt, layer, 200.0 * vector / np.linalg.norm(vector) * float(rng.uniform(1, 2)), 4


def _steer_inputs(rng: np.random.Generator) -> tuple:
    hidden = _acts(rng)
    return hidden, rng.normal(size=hidden.shape[1]) * 3, float(rng.uniform(0.1, 2)), float(rng.uniform(1, 50))


def _toward_inputs(rng: np.random.Generator) -> tuple:
    d = int(rng.integers(4, 16))
    return rng.normal(size=d) * 5 + 3, rng.normal(size=d), _unit(rng.normal(size=d)), float(rng.uniform(0, 1))


def _parent_inputs(rng: np.random.Generator) -> tuple:
    n, n_fine, n_coarse = int(rng.integers(20, 80)), int(rng.integers(3, 12)), int(rng.integers(2, 6))
    fine = rng.integers(0, n_fine - 1, size=n)  # the last fine region gets no token: its parent is -1
    coarse = np.where(rng.random(n) < 0.7, fine % n_coarse, rng.integers(0, n_coarse, size=n))
    tied = np.flatnonzero(fine == 0)[:2 * (int((fine == 0).sum()) // 2)]  # fine region 0: an exact tie
    fine[fine == 0] = 1
    fine[tied], coarse[tied] = 0, np.resize([1, 0], len(tied))  # as many tokens in coarse 1 as in coarse 0
    return fine, coarse, n_fine


# -----------------------------------------------------------------------------
# the exercises

EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    Exercise(
        "most_coherent", "00",
        "most_coherent(counts [K], coherence [K], n, min_members) -> ids of the n most coherent eligible regions",
        _coherent_inputs, _most_coherent,
        wrong={"1-member regions kept": lambda c, h, n, m: np.argsort(-h, kind="stable")[:n],
               "> instead of >= min_members": lambda c, h, n, m: _most_coherent(c, h, n, m + 1),
               "the biggest, not the most coherent": lambda c, h, n, m: np.argsort(-c, kind="stable")[:n]}),
    Exercise(
        "place_tokens", "00",
        "place_tokens(acts [N, d] raw, centre [d], exemplars [K, d], theta) -> region [N], -1 where new",
        _place_inputs, _place_tokens, edge=lambda: [_place_ties(np.random.default_rng(0))],
        wrong={"not centred": lambda a, c, e, t: _place_tokens(a, np.zeros_like(c), e, t),
               ">= instead of > at θ": lambda a, c, e, t: np.where(
                   1 - (_unit(a - c) @ e.T).max(1) >= t, -1, np.argmax(_unit(a - c) @ e.T, axis=1)),
               "never new (plain assignment)": lambda a, c, e, t: np.argmax(_unit(a - c) @ e.T, axis=1)}),
    Exercise(
        "coherence", "02", "coherence(members [n, d] unit rows) -> float: ||Σu|| / n",
        lambda rng: (_unit(rng.normal(size=(int(rng.integers(2, 50)), 8)) + rng.uniform(0, 2)),), _coherence,
        wrong={"mean norm": lambda m: float(np.linalg.norm(m, axis=1).mean()),
               "norm of the sum": lambda m: float(np.linalg.norm(m.sum(0)))}),
    Exercise(
        "assign", "02", "assign(u [N, d], exemplars [K, d]) -> region [N]: the most similar exemplar",
        _assign_inputs, _assign,
        wrong={"least similar": lambda u, e: np.argmin(u @ e.T, axis=1),
               "the first close exemplar, not the nearest":
                   lambda u, e: np.array([next((k for k in range(len(e)) if x @ e[k] >= 0.5), 0) for x in u])}),
    Exercise(
        "spherical_centre", "01", "spherical_centre(acts [N, d]) -> centre [d]",
        lambda rng: (_acts(rng),), lambda acts: _np(spherical_centre(acts)),
        wrong={"plain mean": lambda a: a.mean(0),
               "mean unit direction": lambda a: _unit(a).mean(0)}),
    Exercise(
        "to_directions", "01", "to_directions(acts [N, d], centre [d]) -> u [N, d] centred unit rows",
        _removal_inputs_no_e, lambda a, c: _np(to_directions(a, c)),
        wrong={"not centred": lambda a, c: _unit(a), "not normalised": lambda a, c: a - c}),
    Exercise(
        "theta_percentile", "01", "theta_percentile(u [N, d] unit rows, p) -> θ",
        lambda rng: (_unit(rng.normal(size=(int(rng.integers(20, 80)), 6))), float(rng.choice([1.0, 5.0, 10.0]))),
        _theta,
        wrong={"with the diagonal": lambda u, p: float(np.percentile(1 - u @ u.T, p)),
               "the (100 - p)-th percentile": lambda u, p: _theta(u, 100 - p),
               "cosine, not distance": lambda u, p: float(np.percentile(u @ u.T, p))}),
    Exercise(
        "leader_rule", "02", "leader_rule(u [N, d] unit rows, theta) -> exemplar indices in arrival order",
        _leader_inputs, lambda u, t: leader_cluster_reference(u, t),
        edge=lambda: [(DYADIC, 0.5)],  # exact ties at θ
        wrong={">= instead of >": lambda u, t: _leader_ge(u, t),
               "only the last exemplar": lambda u, t: _leader_last(u, t)}),
    Exercise(
        "nearest_exemplar_distance", "03",
        "nearest_exemplar_distance(acts [N, d], centre [d], exemplars [K, d]) -> [N] cosine distance",
        _ood_inputs, _nearest_distance,
        wrong={"not centred": lambda a, c, e: 1 - (_unit(a) @ e.T).max(1),
               "farthest": lambda a, c, e: 1 - (_unit(a - c) @ e.T).min(1)}),
    Exercise(
        "document_score", "03", "document_score(token_scores [T]) -> float: a text's OOD score, the mean",
        lambda rng: (rng.gamma(2.0, 0.2, size=int(rng.integers(3, 60))),), lambda s: float(np.mean(s)),
        wrong={"max": lambda s: float(np.max(s)), "sum": lambda s: float(np.sum(s))}),
    Exercise(
        "centred_removal", "04", "centred_removal(x [N, d], e [d] unit, c [d]) -> x with (x - c)·e removed",
        _removal_inputs, lambda x, e, c: _np(project_out(*map(torch.as_tensor, (x, e[None], c)))),
        wrong={"plain removal": lambda x, e, c: x - np.outer(x @ e, e),
               "centre dropped": lambda x, e, c: (x - c) - np.outer((x - c) @ e, e)}, rtol=1e-4, atol=1e-4),
    Exercise(
        "diff_in_means", "04", "diff_in_means(pos [N1, d], neg [N2, d]) -> unit [d]",
        lambda rng: (lambda d: (_acts(rng, d=d), _acts(rng, d=d)))(int(rng.integers(6, 24))),
        lambda p, n: _np(diff_in_means(torch.as_tensor(p), torch.as_tensor(n))).astype(np.float64),
        wrong={"not normalised": lambda p, n: p.mean(0) - n.mean(0),
               "neg - pos": lambda p, n: _unit(n.mean(0) - p.mean(0))}, rtol=1e-4, atol=1e-5),
    Exercise(
        "hungarian_match", "05", "hungarian_match(cos [Ka, Kb], cutoff) -> set of (i, j) one-to-one pairs",
        _cos_matrix_inputs, _hungarian,
        wrong={"greedy per row": lambda c, t: {(i, int(c[i].argmax())) for i in range(len(c)) if c[i].max() >= t},
               "no cutoff": lambda c, t: _hungarian(c, -2.0)}),
    Exercise(
        "membership_f1", "05", "membership_f1(a, b) -> float: F1 of two sets of token ids",
        _two_sets_inputs, _membership_f1,
        wrong={"Jaccard": lambda a, b: len(set(a) & set(b)) / len(set(a) | set(b))}),
    Exercise(
        "top_set", "06", "top_set(scores [N], k) -> set of the k top tokens among positive scores",
        _top_set_inputs, _top_set, edge=lambda: [(np.array([-1.0, 2.0, -0.5, 1.0, 0.0]), 4)],  # 2 positives < k
        wrong={"positives not required": lambda s, k: set(np.argsort(-s, kind="stable")[:k].tolist())}),
    Exercise(
        "histogram_feature", "06", "histogram_feature(texts: list of [T, d] unit rows, basis [K, d]) -> [n, K]",
        _histogram_inputs, _histogram,
        wrong={"pooled then one-hot": lambda t, b: np.eye(len(b))[[_assign(_unit(x.mean(0))[None], b)[0] for x in t]],
               "counts, not means": lambda t, b: np.stack([np.bincount(_assign(x, b), minlength=len(b)) for x in t])}),
    Exercise(
        "max_pooled_score", "07", "max_pooled_score(acts [T, d], prefix, e [d]) -> float",
        _max_pooled_inputs, _max_pooled,
        edge=lambda: [(np.array([[5.0, 0], [4, 0], [3, 0], [2, 0], [-1, 0]]), 3, np.array([1.0, 0]))],  # max just after
        wrong={"prefix included": lambda a, p, e: float((a @ e).max()),
               "mean pooling": lambda a, p, e: float((a[p:] @ e).mean())}),
    Exercise(
        "steer", "08", "steer(hidden [N, d], direction [d], strength, unit) -> hidden + strength·unit·(unit direction)",
        _steer_inputs,
        lambda h, v, a, s: _np(Steer(torch.as_tensor(v), a, s, 0)(torch.as_tensor(h), 0)).astype(np.float64),
        wrong={"direction not normalised": lambda h, v, a, s: h + a * s * v,
               "unit ignored": lambda h, v, a, s: h + a * v / np.linalg.norm(v)}, rtol=1e-4, atol=1e-3),
    Exercise(
        "toward_exemplar", "08", "toward_exemplar(x [d], centre [d], target [d] unit, amount) -> x, rotated",
        _toward_inputs,
        lambda x, c, t, a: _np(toward_exemplar(*map(torch.as_tensor, (x, c, t)), a)).astype(np.float64),
        wrong={"norm not kept": lambda x, c, t, a: c + (1 - a) * (x - c) + a * t,
               "no centre": lambda x, c, t, a: np.linalg.norm(x) * _unit((1 - a) * _unit(x) + a * t)},
        rtol=1e-4, atol=1e-3),
    Exercise(
        "new_per_batch", "09", "new_per_batch(region_counts [n]) -> new regions added by each batch [n]",
        lambda rng: (np.cumsum(rng.integers(0, 30, size=int(rng.integers(3, 20)))),),
        lambda counts: np.diff(np.r_[0, counts]),
        wrong={"first batch dropped": lambda c: np.diff(c), "cumulative": lambda c: c}),
    Exercise(
        "majority_parent", "09", "majority_parent(fine_ids [N], coarse_ids [N], n_fine) -> parent [n_fine]",
        _parent_inputs, lambda f, c, n: resolution_parents(f, c, n)[0],
        wrong={"first token's region": lambda f, c, n: np.array([c[f == i][0] if (f == i).any() else -1
                                                                 for i in range(n)]),
               "ties to the highest id": lambda f, c, n: _parent_ties_high(f, c, n)}),
    Exercise(
        "theta_by_documents", "02",
        "theta_by_documents(u [N, d], doc [N], p, docs_per_batch) -> θ: mean over batches of whole documents",
        _documents_inputs, _theta_by_documents, rtol=1e-4, atol=1e-5,
        edge=lambda: [(DYADIC[:7], np.array([0, 0, 1, 1, 1, 2, 3]), 50.0, 2)],  # a last batch of one row
        wrong={"all rows in one batch": lambda u, d, p, k: _theta(u, p),
               "the batches' pairs pooled": _theta_pooled,
               "batches of docs_per_batch rows, not documents": lambda u, d, p, k: _theta_by_documents(
                   u, np.arange(len(u)) // max(1, 3 - k), p, k)}),
    Exercise(
        "leader_counts", "02",
        "leader_counts(u [N, d], theta) -> (exemplars [K], members of each region counted at arrival [K])",
        _leader_inputs, _leader_counts, edge=lambda: [(DYADIC, 0.5), (OVERTAKEN, 0.5)],
        wrong={"counted with the first exemplar within θ, not the nearest":
                   lambda u, t: _leader_counts(u, t, nearest_at_arrival=False),
               "counted by final cells, not at arrival": _final_counts}),
    Exercise(
        "stop_batch", "09", "stop_batch(new_per_batch [n], window) -> the batch that ends the build, or -1",
        _stop_inputs, _stop_batch,
        edge=lambda: [(np.array([3, 0, 2, 0, 0, 1]), 2), (np.array([0, 5, 1]), 1)],
        wrong={"quiet batches counted in total, not in a row": _stop_quiet_in_total,
               "the first quiet batch of the run, not the last": lambda n, w: _stop_batch(n, w) - (w - 1) * (
                   _stop_batch(n, w) >= 0)}),
    Exercise(
        "coverage", "03", "coverage(distances [N], theta) -> [within-θ rate, mean, median, p90, p99]",
        _coverage_inputs, _coverage,
        wrong={"< instead of <= θ": lambda d, t: np.r_[(d < t).mean(), _coverage(d, t)[1:]],
               "the rate of tokens beyond θ": lambda d, t: np.r_[(d > t).mean(), _coverage(d, t)[1:]]}),
    Exercise(
        "refusal_rates", "04",
        "refusal_rates(regions [N], refused [N] bool, n_regions, min_members) -> [n_regions] rate, -1 if too few",
        _rates_inputs, _refusal_rates,
        edge=lambda: [(np.array([0, 0, 0, 1, 1, 2]), np.array([True, False, True, True, False, True]), 4, 2)],
        wrong={"small regions not marked": lambda r, y, n, m: _refusal_rates(r, y, n, 1),
               "> instead of >= min_members": lambda r, y, n, m: _refusal_rates(r, y, n, m + 1),
               "refusals counted, not a rate": lambda r, y, n, m: np.where(
                   _refusal_rates(r, y, n, m) < 0, -1.0, np.bincount(r, weights=y, minlength=n))}),
    Exercise(
        "per_document", "03", "per_document(scores [N], doc [N]) -> [n_docs] mean token score of each document",
        _document_inputs, lambda s, d: per_document(s, d),
        wrong={"sum, not mean": lambda s, d: np.array([s[d == k].sum() for k in np.unique(d)]),
               "a row for every id up to the largest": lambda s, d: np.array(
                   [s[d == k].mean() if (d == k).any() else 0.0 for k in range(d.max() + 1)])}),
    Exercise(
        "mini_build", "02",
        "mini_build(calib [M, d], stream [N, d], p) -> (exemplar indices [K], region of each stream row [N])",
        _mini_build_inputs, _mini_build, edge=lambda: [(AXES, MOVED, 10.0)],
        wrong={"not centred": lambda c, s, p: _mini_build(c, s, p, centred=False),
               "θ from the stream, not the calibration": lambda c, s, p: _mini_build(c, s, p, theta_from=s),
               "regions at arrival, not the nearest exemplar": _at_arrival}),
    Exercise(
        "layer_output", "01", "layer_output(model, text, layer) -> [T, d] block `layer`'s output, BOS dropped",
        _text_inputs, _layer_output, needs_model=True, rtol=1e-3, atol=1e-3,
        wrong={"BOS kept": lambda m, t, k: _np(_trace_block(m, t, k)),
               "the block's input (the previous block's output)": lambda m, t, k: _np(_trace_block(m, t, k - 1)[1:])}),
    Exercise(
        "steered_tokens", "08",
        "steered_tokens(model, prompt, layer, vector [d], n_new) -> greedy new token ids, vector added at every step",
        _steered_inputs, _steered_tokens, needs_model=True,
        wrong={"the edit made once, so only the prompt pass is steered": _steered_first_step_only,
               "subtracted, not added": lambda m, t, k, v, n: _steered_tokens(m, t, k, v, n, sign=-1.0)}),
    Exercise(
        "auroc", "03", "auroc(inside [n1], outside [n2]) -> P(an outside score > an inside one), ties counting 1/2",
        _auroc_inputs, _auroc, edge=lambda: [(np.array([0.1, 0.2, 0.2]), np.array([0.2, 0.3]))],
        wrong={"ties counted as wins": lambda a, b: float((b[:, None] >= a[None, :]).mean()),
               "ties ignored": lambda a, b: float((b[:, None] > a[None, :]).mean()),
               "inside and outside swapped": lambda a, b: 1.0 - _auroc(a, b)}),
    Exercise(
        "best_cut_accuracy", "04",
        "best_cut_accuracy(scores [N], labels [N] bool) -> best accuracy of 'positive iff score > t' over all t",
        _best_cut_inputs, _best_cut,
        edge=lambda: [(np.array([0.0, 0.0, 1.0]), np.array([False, True, True])),
                      (np.array([0.5, 1.0, 2.0]), np.array([True, True, True])),  # all positive: cut below all
                      (np.array([1.0, 2.0, 3.0]), np.array([True, False, False]))],  # reversed: no flipping
        wrong={"tied scores split between the sides": _best_cut_split_ties,
               "no cut below every score": lambda s, y: float(max(((s > t) == y).mean() for t in np.unique(s))),
               "the flipped rule allowed too": lambda s, y: max(_best_cut(s, y), _best_cut(-s, y))}),
    Exercise(
        "concept_region", "07", "concept_region(pos_cos [Np, K], neg_cos [Nn, K]) -> region id",
        _concept_inputs, _concept_region,
        wrong={"positives only": lambda p, n: int(np.argmax(p.mean(0)))}),
]}


def _parent_ties_high(fine: np.ndarray, coarse: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1)
    for i in range(n):
        b = np.bincount(coarse[fine == i])
        if len(b):
            out[i] = len(b) - 1 - np.argmax(b[::-1])
    return out


def _leader_ge(u: np.ndarray, theta: float) -> np.ndarray:
    ex: list[int] = []
    for i, x in enumerate(u):
        if all(1 - x @ u[j] >= theta for j in ex):
            ex.append(i)
    return np.array(ex)


def _leader_last(u: np.ndarray, theta: float) -> np.ndarray:
    ex: list[int] = []
    for i, x in enumerate(u):
        if not ex or 1 - x @ u[ex[-1]] > theta:
            ex.append(i)
    return np.array(ex)


# -----------------------------------------------------------------------------
# checking

def _length(x) -> str:
    return f"of {len(x)}" if isinstance(x, (tuple, list)) else ""


def _same(got, want, ex: Exercise) -> str | None:
    """None when got matches want, else a short description of the difference."""
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            return f"returned {type(got).__name__} {_length(got)}, expected a tuple of {len(want)}"
        for k, (g, w) in enumerate(zip(got, want)):
            diff = _same(g, w, ex)
            if diff is not None:
                return f"part {k} of the tuple: {diff}"
        return None
    if isinstance(want, set):
        got = set(map(tuple, got)) if got and not isinstance(next(iter(got)), (int, np.integer)) else set(got)
        return None if got == want else f"missing {sorted(want - got)[:5]}, unexpected {sorted(got - want)[:5]}"
    want, got = np.asarray(_np(want), dtype=np.float64), np.asarray(_np(got), dtype=np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if not np.allclose(got, want, rtol=ex.rtol, atol=ex.atol):
        i = np.unravel_index(np.argmax(np.abs(got - want)), want.shape) if want.ndim else ()
        return f"at index {tuple(map(int, i))}: expected {float(want[i]):.6g}, got {float(got[i]):.6g}" if want.ndim \
            else f"expected {float(want):.6g}, got {float(got):.6g}"
    return None


def _copies(args: tuple) -> list:
    """The arguments as the learner's function gets them: arrays copied, so an in-place edit changes nothing here."""
    return [a.copy() if isinstance(a, np.ndarray) else list(a) if isinstance(a, list) else a for a in args]


def _show(args: tuple, names: list[str]) -> str:
    """The input as a learner can paste it: small arrays in full, large ones by shape."""
    out = []
    for name, a in zip(names, args):
        if isinstance(a, np.ndarray) and a.size <= 48:
            text = np.array2string(a, precision=3, suppress_small=True, separator=", ", max_line_width=100)
            out.append(f"{name} = np.array({text})".replace("\n", "\n" + " " * (len(name) + 13)))
        elif isinstance(a, np.ndarray):
            out.append(f"{name}: array of shape {a.shape}")
        elif isinstance(a, list):
            out.append(f"{name}: list of {len(a)} arrays")
        elif not isinstance(a, (str, int, float, np.generic)):
            out.append(f"{name}: the notebook's {type(a).__name__}")
        else:
            out.append(f"{name} = {a!r}")
    return "\n    ".join(out)


def _failure(ex: Exercise, fn: Callable, args: tuple) -> str | None:
    """None when fn agrees with the reference on args, else what differs (NotImplementedError propagates)."""
    want = ex.reference(*_copies(args))
    try:
        got = fn(*_copies(args))
    except NotImplementedError:
        raise
    except Exception as e:  # a learner's bug: say where, do not stop the notebook
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return f"raised {type(e).__name__}: {e} (line {frame.lineno})"
    try:
        diff = _same(got, want, ex)
    except Exception as e:
        return f"returned a {type(got).__name__}, not comparable with the expected {type(want).__name__} ({e})"
    return diff


def _known_mistakes(ex: Exercise, fn: Callable, args: tuple) -> list[str]:
    """The names of the listed mistakes whose output on args equals fn's."""
    try:
        got = fn(*_copies(args))
    except Exception:
        return []
    names = []
    for mistake, wrong in ex.wrong.items():
        try:
            if _same(got, wrong(*_copies(args)), ex) is None:
                names.append(mistake)
        except Exception:
            continue
    return names


def _valid(ex: Exercise, args: tuple) -> bool:
    """Does the reference accept these (shrunk) arguments? Shapes must still fit together."""
    try:
        with np.errstate(all="ignore"):
            ex.reference(*_copies(args))
        return True
    except Exception:
        return False


def _shrink(ex: Exercise, fn: Callable, args: tuple, budget: int = 200) -> tuple:
    """A smaller input that still fails: drop chunks of rows (first axis) of each array or list argument while
    the reference still accepts the input and fn still disagrees with it (greedy, halves down to single rows)."""
    args = list(args)
    for i, a in enumerate(args):
        if not isinstance(a, (np.ndarray, list)) or (isinstance(a, np.ndarray) and a.ndim == 0):
            continue
        size = max(1, len(a) // 2)
        while size >= 1 and budget > 0:
            start, shrunk = 0, False
            while start < len(args[i]) and len(args[i]) > 1 and budget > 0:
                a = args[i]
                keep = np.r_[0:start, min(len(a), start + size):len(a)]
                smaller = a[keep] if isinstance(a, np.ndarray) else [a[k] for k in keep]
                trial = tuple(args[:i] + [smaller] + args[i + 1:])
                budget -= 1
                try:
                    fails = len(smaller) > 0 and _valid(ex, trial) and _failure(ex, fn, trial) is not None
                except NotImplementedError:
                    fails = False
                if fails:
                    args[i], shrunk = smaller, True
                else:
                    start += size
            if not shrunk:
                size //= 2
    return tuple(args)


def _verdict(ex: Exercise, fn: Callable, cases: list[tuple[str, tuple]], names: list[str]) -> str | None:
    """None when fn passes every case, else what to tell the learner about the first failing one."""
    try:
        for label, args in cases:
            if _failure(ex, fn, args) is not None:
                mistakes = _known_mistakes(ex, fn, args)  # on the whole input: a shrunk one tells fewer apart
                small = args if ex.needs_model else _shrink(ex, fn, args)  # a model call is slow: no shrinking
                return f"wrong on {label}: {_failure(ex, fn, small)}." + \
                    (f" This is a known mistake: {' or '.join(mistakes)}." if mistakes else "") + \
                    "\n  The smallest failing input found:\n    " + _show(small, names)
    except NotImplementedError:
        return "not written yet (it raises NotImplementedError): fill in the function and run the cell again"
    return None


def check(name: str, fn: Callable, trials: int = 6, must_pass: bool = False, quiet: bool = False,
          seed: int | None = None, model=None) -> bool:
    """Run ``fn`` against exercise ``name``'s reference on its edge cases and ``trials`` fresh inputs; print
    and return the verdict. On a failure it prints the smallest failing input it finds and, when the answer
    matches a known mistake, names it. ``seed``: replay the random inputs of an earlier call. ``model``: the
    notebook's model, for the exercises that trace one (its first argument).

    Never raises for a wrong or unfinished answer (unless ``must_pass``, which CI uses with the solutions
    filled in): the notebook goes on with the reference either way."""
    import inspect

    ex = EXERCISES[name]
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    if ex.needs_model and model is None:
        raise TypeError(f"exercise {name} runs on a model: check({name!r}, your_function, model=model)")
    draw = (lambda: (model, *ex.inputs(rng, model))) if ex.needs_model else (lambda: ex.inputs(rng))
    cases = [("an edge case", args) for args in ex.edge()]
    cases += [(f"random input {t + 1} of {trials}", draw()) for t in range(trials)]
    names = list(inspect.signature(SOLUTIONS[name]).parameters)  # the names the notebook's stub uses
    with warnings.catch_warnings():  # nnsight warns each time an open generation loop ends, by design
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        verdict = _verdict(ex, fn, cases, names)
    if not quiet:
        edges = len(cases) - trials
        print(f"✓ {name}: matches the reference on {edges} edge case{'s' * (edges != 1)} and {trials} random inputs"
              if verdict is None else
              f"✗ {name}: {verdict}\n  (replay these inputs: ep.exercises.check({name!r}, your_function, seed={seed}"
              f"{', model=model' if ex.needs_model else ''}))")
    if must_pass and verdict is not None:
        raise AssertionError(f"exercise {name}: {verdict}")
    return verdict is None


def checked(name: str, fn: Callable, must_pass: bool = False, model=None, **kwargs) -> Callable:
    """``check`` the learner's function, then return the function the notebook goes on with: the learner's own
    when it passes, else the worked solution (saying so in one line), so a wrong answer never breaks what follows.

    >>> assign = checked("assign", assign)  # doctest: +SKIP"""
    if check(name, fn, must_pass=must_pass, model=model, **kwargs):
        return fn
    print(f"→ the notebook goes on with the worked solution of {name}, not yours")
    return SOLUTIONS[name]


def solution(name: str) -> Callable:
    """The worked solution of exercise ``name``: plain numpy, as a learner would write it (see SOLUTIONS)."""
    return SOLUTIONS[name]


def solution_source(name: str) -> str:
    """The worked solution's source, as the notebook's solution dropdown shows it."""
    import inspect
    import re

    return re.sub(r"\b(\w+)_solution\(", r"\1(", inspect.getsource(SOLUTIONS[name]))  # calls of other solutions too


def for_notebook(notebook: str) -> list[Exercise]:
    """The exercises posed in one notebook, e.g. ``for_notebook("02")``."""
    return [e for e in EXERCISES.values() if e.notebook == notebook]


# -----------------------------------------------------------------------------
# worked solutions: what a learner would write, in plain numpy. The notebooks show them in a dropdown
# (tests/test_exercises.py checks the text there is this source) and CI runs them with fill_solutions=True.

def most_coherent_solution(counts, coherence, n, min_members):
    eligible = np.flatnonzero(counts >= min_members)
    order = np.argsort(-coherence[eligible])  # positions within `eligible`, most coherent first
    return eligible[order[:n]]


def place_tokens_solution(acts, centre, exemplars, theta):
    x = acts - centre
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = u @ exemplars.T
    region = np.argmax(similarity, axis=1)
    region[1 - similarity.max(axis=1) > theta] = -1  # farther than θ from every exemplar: a new region
    return region


def spherical_centre_solution(acts):
    unit = acts / np.linalg.norm(acts, axis=1, keepdims=True)
    direction = unit.mean(axis=0)
    direction /= np.linalg.norm(direction)
    return (acts.mean(axis=0) @ direction) * direction


def to_directions_solution(acts, centre):
    x = acts - centre
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def theta_percentile_solution(u, p):
    i, j = np.triu_indices(len(u), k=1)  # each pair once, no self-pairs
    return np.percentile(1 - (u[i] * u[j]).sum(axis=1), p)


def leader_rule_solution(u, theta):
    exemplars = []
    for i in range(len(u)):
        if all(1 - u[i] @ u[e] > theta for e in exemplars):  # farther than θ from every earlier exemplar
            exemplars.append(i)
    return np.array(exemplars)


def assign_solution(u, exemplars):
    return np.argmax(u @ exemplars.T, axis=1)


def coherence_solution(members):
    return np.linalg.norm(members.sum(axis=0)) / len(members)


def nearest_exemplar_distance_solution(acts, centre, exemplars):
    u = acts - centre
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return 1 - (u @ exemplars.T).max(axis=1)


def document_score_solution(token_scores):
    return float(np.mean(token_scores))


def centred_removal_solution(x, e, c):
    return x - np.outer((x - c) @ e, e)


def diff_in_means_solution(pos, neg):
    d = pos.mean(axis=0) - neg.mean(axis=0)
    return d / np.linalg.norm(d)


def hungarian_match_solution(cos, cutoff):
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return {(int(r), int(c)) for r, c in zip(rows, cols) if cos[r, c] >= cutoff}


def membership_f1_solution(a, b):
    a, b = set(a.tolist()), set(b.tolist())
    return 2 * len(a & b) / (len(a) + len(b))


def top_set_solution(scores, k):
    order = np.argsort(-scores, kind="stable")
    return {int(i) for i in order[:k] if scores[i] > 0}


def histogram_feature_solution(texts, basis):
    out = np.zeros((len(texts), len(basis)))
    for t, u in enumerate(texts):
        for region in np.argmax(u @ basis.T, axis=1):
            out[t, region] += 1 / len(u)
    return out


def max_pooled_score_solution(acts, prefix, e):
    return float((acts[prefix:] @ e).max())


def concept_region_solution(pos_cos, neg_cos):
    return int(np.argmax(pos_cos.mean(axis=0) - neg_cos.mean(axis=0)))


def steer_solution(hidden, direction, strength, unit):
    return hidden + strength * unit * direction / np.linalg.norm(direction)


def toward_exemplar_solution(x, centre, target, amount):
    v = x - centre
    w = (1 - amount) * v / np.linalg.norm(v) + amount * target
    return centre + np.linalg.norm(v) * w / np.linalg.norm(w)


def new_per_batch_solution(region_counts):
    return np.diff(region_counts, prepend=0)


def majority_parent_solution(fine_ids, coarse_ids, n_fine):
    parent = np.full(n_fine, -1)
    for f in range(n_fine):
        mine = coarse_ids[fine_ids == f]
        if len(mine):
            parent[f] = np.argmax(np.bincount(mine))  # argmax: ties go to the lowest id
    return parent


def theta_by_documents_solution(u, doc, p, docs_per_batch):
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])  # the first row of each document
    thetas = []
    for first in range(0, len(starts), docs_per_batch):
        lo = starts[first]
        hi = starts[first + docs_per_batch] if first + docs_per_batch < len(starts) else len(doc)
        batch = u[lo:hi]  # docs_per_batch whole documents, in stream order
        if len(batch) >= 2:  # a batch of one row has no pair
            i, j = np.triu_indices(len(batch), k=1)
            thetas.append(np.percentile(1 - (batch[i] * batch[j]).sum(axis=1), p))
    return np.mean(thetas)


def leader_counts_solution(u, theta):
    exemplars, counts = [], []
    for i in range(len(u)):
        if exemplars:
            distance = 1 - u[exemplars] @ u[i]
            nearest = int(np.argmin(distance))  # the nearest exemplar so far (ties: the earliest)
        if not exemplars or distance[nearest] > theta:
            exemplars.append(i)  # a new region, with its first member
            counts.append(1)
        else:
            counts[nearest] += 1
    return np.array(exemplars), np.array(counts)


def stop_batch_solution(new_per_batch, window):
    quiet = 0
    for batch, new in enumerate(new_per_batch):
        quiet = quiet + 1 if new == 0 else 0  # quiet batches in a row
        if quiet == window:
            return batch
    return -1


def coverage_solution(distances, theta):
    return np.array([np.mean(distances <= theta), np.mean(distances), np.median(distances),
                     np.percentile(distances, 90), np.percentile(distances, 99)])


def refusal_rates_solution(regions, refused, n_regions, min_members):
    rates = np.full(n_regions, -1.0)  # -1: too few members to say
    for k in range(n_regions):
        members = refused[regions == k]
        if len(members) >= min_members:
            rates[k] = members.mean()
    return rates


def per_document_solution(scores, doc):
    means = []
    for d in np.unique(doc):  # sorted document ids, each once
        means.append(scores[doc == d].mean())
    return np.array(means)


def mini_build_solution(calib, stream, p):
    centre = spherical_centre_solution(calib)  # frozen on the calibration rows
    theta = theta_percentile_solution(to_directions_solution(calib, centre), p)
    u = to_directions_solution(stream, centre)
    exemplars = leader_rule_solution(u, theta)  # in arrival order
    return exemplars, assign_solution(u, u[exemplars])  # the Voronoi cells, once the stream is over


def layer_output_solution(model, text, layer):
    with torch.no_grad(), model.trace(text):
        out = model.model.layers[layer].output.save()  # [1, T, d]: the residual stream after block `layer`
    return out[0, 1:].float().numpy()  # BOS dropped


def steered_tokens_solution(model, prompt, layer, vector, n_new):
    n_prompt = len(model.tokenizer(prompt)["input_ids"])
    with torch.no_grad(), model.generate(max_new_tokens=n_new, do_sample=False) as tracer:
        with tracer.invoke(prompt):
            for _ in tracer.all():  # every generation step: the prompt pass, then one new token at a time
                block = model.model.layers[layer]
                block.output = block.output + torch.as_tensor(vector).to(block.output)  # its dtype and device
        with tracer.invoke():  # after the loop has ended
            ids = tracer.result.save()
    return ids[0, n_prompt:].numpy()


def auroc_solution(inside, outside):
    above = (outside[:, None] > inside[None, :]).sum()  # pairs where the outside text scores higher
    tied = (outside[:, None] == inside[None, :]).sum()
    return (above + 0.5 * tied) / (len(inside) * len(outside))


def best_cut_accuracy_solution(scores, labels):
    best = 0.0
    for t in np.concatenate([[-np.inf], np.unique(scores)]):  # below every score, then at each distinct score
        accuracy = np.mean((scores > t) == labels)
        best = max(best, accuracy)
    return best


SOLUTIONS: dict[str, Callable] = {name.removesuffix("_solution"): fn for name, fn in list(globals().items())
                                  if name.endswith("_solution") and callable(fn)}
