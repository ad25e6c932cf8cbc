"""
Calibration: the frozen centre c and the cosine-distance threshold θ.

EP works on *directions*, not raw activations. Residual-stream activations share a
large common component, so we first subtract a frozen "spherical centre" c and
normalise, u = (a - c) / ||a - c||. Leader clustering then needs one number, the
threshold θ: a token becomes a new exemplar iff its cosine distance to every earlier
exemplar exceeds θ. We choose θ as a percentile of the pairwise cosine distances
between centred directions (p1 = the 1st percentile: a small distance, many regions).

Both quantities are estimated once, on a calibration sample, and then frozen, so that
the dictionary built later is a deterministic function of (data, calibration).

How the calibration sample is cut into batches matters for θ (a percentile of *within-batch*
distances). The paper's code (`ep/discovery/calibration.py` of the official repository) takes
batches of **whole documents in stream order**, 128 documents per batch in its CLI; that is the
default here whenever the rows know their document (an ``ActivationBatch``). Plain arrays are cut
into shuffled batches of rows instead (the ``"rows"`` protocol, kept as a control).

Calibrations are cheap to cache: `cached_calibration` keys a file by a hash of
everything the calibration depends on. Files are safetensors + JSON, never pickle.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .batch import ActivationBatch
from .files import atomic_write_bytes, canonical_json, key_hash, load_arrays, save_arrays  # noqa: F401 (re-exported)
from .rows import check_acts, check_shape

SCHEMA_VERSION = 2
_META_KEY = "ep_calibration"  # the single key in the safetensors __metadata__


def spherical_centre(acts, chunk_size: int = 65536) -> torch.Tensor:
    """
    acts [N, d] -> centre [d] float32.
    direction = normalised mean of a/||a||; magnitude = <mean(a), direction>;
    centre = magnitude * direction. Accumulated in float64, chunked over rows.

    >>> spherical_centre(torch.tensor([[2.0, 0.0], [0.0, 1.0]])).tolist()  # direction (1, 1)/√2, magnitude 1.5/√2
    [0.75, 0.75]
    """
    a = check_acts(acts)
    n, d = a.shape
    sum_a = torch.zeros(d, dtype=torch.float64)     # [d]
    sum_unit = torch.zeros(d, dtype=torch.float64)  # [d]
    for chunk in torch.split(a, chunk_size):
        x = chunk.detach().to("cpu", torch.float64)  # [n, d]
        sum_a += x.sum(0)
        sum_unit += (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).sum(0)
    direction = sum_unit / sum_unit.norm().clamp_min(1e-12)  # [d]
    magnitude = torch.dot(sum_a / n, direction)
    return (direction * magnitude).float()


def to_directions(acts, centre) -> torch.Tensor:
    """acts [N, d] raw, centre [d] -> u [N, d] float32 centred unit rows (zero rows stay 0).

    >>> to_directions(torch.tensor([[4.0, 5.0], [1.0, 1.0]]), torch.tensor([1.0, 1.0]))  # (3, 4)/5; a == c stays 0
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000]])
    """
    a = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.asarray(acts))
    c = torch.as_tensor(centre).to(a.device, torch.float32)
    check_shape(a, c.shape[0])
    x = a.float() - c  # [N, d]
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_percentile(percentile: float) -> float:
    p = float(percentile)
    if not 0.0 < p < 100.0:
        raise ValueError(f"percentile must be in the open interval (0, 100), got {percentile}")
    return p


# -----------------------------------------------------------------------------
# the p-th percentile of all pairwise cosine distances within one batch

def _condensed_distances(u: torch.Tensor) -> torch.Tensor:
    """u [b, d] unit rows -> [b(b-1)/2] float32 cosine distances of all pairs i < j (scipy's pdist order)."""
    iu = torch.triu_indices(len(u), len(u), offset=1, device=u.device)
    return (1.0 - (u @ u.T)[iu[0], iu[1]]).clamp(0, 2)


def _lerp_percentile(order_stat: Callable[[int], float], n: int, p: float) -> float:
    """numpy's default ('linear') percentile of n values, given a function that returns the k-th smallest."""
    position = p / 100.0 * (n - 1)
    lo = int(np.floor(position))
    low = order_stat(lo)
    if lo + 1 >= n or position == lo:
        return low
    return low + (position - lo) * (order_stat(lo + 1) - low)


def _blocked_percentile(u: torch.Tensor, p: float, block_rows: int, sample: int = 200_000) -> float:
    """The same percentile without holding all b(b-1)/2 distances: exact order statistics in one streamed pass.

    Distance 1 - s falls as similarity s rises, so the r-th smallest distance is 1 - (the r-th largest
    similarity). A random sample of pairs brackets the wanted similarities; one pass over the Gram matrix, a
    block of rows at a time, counts the pairs above the bracket and keeps those inside it; the wanted ranks
    are then read off the sorted kept values. If the bracket missed (a rare unlucky sample), the failing side
    is opened and the pass repeated, so the answer is always exact. Memory: one [block_rows, b] block.
    """
    b = len(u)
    n = b * (b - 1) // 2
    position = p / 100.0 * (n - 1)
    ranks = [int(np.floor(position)), min(int(np.floor(position)) + 1, n - 1)]  # from the top, in similarity

    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, b, (sample,), generator=g)
    j = torch.randint(0, b - 1, (sample,), generator=g)
    j += (j >= i).long()                                                  # a uniform pair i != j
    sampled = (u[i] * u[j]).sum(1).sort(descending=True).values          # [sample]
    spread = 6.0 * np.sqrt(max(ranks[1] / n * (1 - ranks[0] / n), 1e-12) * sample) + 20
    high = float(sampled[max(0, int(ranks[0] / n * sample - spread))])
    low = float(sampled[min(sample - 1, int(np.ceil(ranks[1] / n * sample + spread)))])
    below_diagonal = torch.ones(block_rows, block_rows, dtype=torch.bool, device=u.device).tril()

    while True:
        above, kept = 0, []
        for r0 in range(0, b - 1, block_rows):
            sims = u[r0:r0 + block_rows] @ u[r0:].T                      # [rows, b - r0]; column c is row r0 + c
            rows = sims.shape[0]
            sims[:, :rows].masked_fill_(below_diagonal[:rows, :rows], float("nan"))  # pairs j <= i: not counted
            above += int((sims > high).sum())
            kept.append(sims[(sims >= low) & (sims <= high)].cpu())
        kept = torch.cat(kept).sort(descending=True).values
        if above <= ranks[0] and ranks[1] < above + len(kept):
            break
        if above > ranks[0]:
            high = float("inf")
        if ranks[1] >= above + len(kept):
            low = -float("inf")

    def order_stat(rank: int) -> float:  # the rank-th smallest distance, as the reference computes it
        return float((1.0 - kept[rank - above]).clamp(0, 2))

    return _lerp_percentile(order_stat, n, p)


def pairwise_percentile(directions, percentile: float, max_pairs: int = 2**24, block_rows: int = 1024) -> float:
    """The p-th percentile (numpy's 'linear' rule) of the cosine distances of all pairs of rows, exactly.

    Up to ``max_pairs`` pairs the condensed distances are held in memory and handed to numpy; above it
    (128 documents of 128 tokens are 134M pairs, which torch.quantile refuses and which would take ~1 GB
    in float64) the same order statistics are found block by block (``_blocked_percentile``).

    >>> u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])   # distances 1, 2, 1
    >>> pairwise_percentile(u, 50)
    1.0
    """
    u = check_acts(directions, name="directions").float()
    if len(u) < 2:
        raise ValueError(f"need at least 2 rows to measure pairwise distances, got {len(u)}")
    return _pairwise_percentile(u, _check_percentile(percentile), max_pairs, block_rows)


def _pairwise_percentile(u: torch.Tensor, p: float, max_pairs: int = 2**24, block_rows: int = 1024) -> float:
    """``pairwise_percentile`` of checked unit rows u [b >= 2, d] and a checked p (no second pass over the input)."""
    if len(u) * (len(u) - 1) // 2 <= max_pairs:
        return float(np.percentile(_condensed_distances(u).double().cpu().numpy(), p))
    return _blocked_percentile(u, p, block_rows)


# -----------------------------------------------------------------------------
# calibration batches: whole documents in stream order (the paper) or shuffled rows (control)

def document_batches(doc, docs_per_batch: int) -> list[torch.Tensor]:
    """Row indices of consecutive groups of ``docs_per_batch`` whole documents, in stream order.

    ``doc`` [N] is each row's document index; a document's rows must be contiguous (as an extractor
    yields them). The last group may hold fewer documents.

    >>> [b.tolist() for b in document_batches(torch.tensor([0, 0, 1, 2, 2, 2]), 2)]
    [[0, 1, 2], [3, 4, 5]]
    """
    if docs_per_batch < 1:
        raise ValueError(f"docs_per_batch must be >= 1, got {docs_per_batch}")
    doc = torch.as_tensor(doc).reshape(-1).cpu()
    if len(doc) == 0:
        return []
    runs = torch.unique_consecutive(doc, return_counts=True)[1]          # rows per document, in order
    if len(runs) != len(torch.unique(doc)):
        raise ValueError("each document's rows must be contiguous (stream order), "
                         "but some document appears in more than one run of rows")
    group = torch.arange(len(runs)) // docs_per_batch                   # [n_docs] batch of each document
    sizes = torch.zeros(int(group[-1]) + 1, dtype=torch.int64).index_add_(0, group, runs)
    return list(torch.arange(len(doc)).split(sizes.tolist()))


def row_batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Shuffled batches of ``batch_size`` rows (seeded); the ragged tail is dropped when a full batch exists."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    b = min(batch_size, n)
    return list(perm[: n // b * b].split(b))


def batch_percentiles(directions, percentile: float, batch_size: int = 1024, seed: int = 0,
                      batches: list[torch.Tensor] | None = None) -> np.ndarray:
    """
    The p-th percentile of within-batch pairwise cosine distances, one per batch -> [n_batches] float64.
    ``batches`` are row indices (e.g. ``document_batches``); by default the rows are shuffled with ``seed``
    and cut into ``row_batches`` of ``batch_size``. Batches of fewer than 2 rows are skipped.
    """
    p = _check_percentile(percentile)
    u = check_acts(directions, name="directions").float()  # [N, d]
    if u.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to measure pairwise distances, got {u.shape[0]}")
    if batches is None:
        batches = row_batches(u.shape[0], batch_size, seed)
    values = [_pairwise_percentile(u[rows.to(u.device)], p) for rows in batches if len(rows) >= 2]
    if not values:
        raise ValueError("no calibration batch holds 2 or more rows")
    return np.array(values, dtype=np.float64)


def percentile_threshold(directions, percentile: float, batch_size: int = 1024, seed: int = 0,
                         batches: list[torch.Tensor] | None = None) -> float:
    """θ = mean over calibration batches of the p-th percentile of pairwise cosine distance."""
    return float(batch_percentiles(directions, percentile, batch_size, seed, batches).mean())


PROTOCOLS = ("documents", "rows")


@dataclass(eq=False)
class Calibration:
    centre: torch.Tensor  # [d] float32 frozen spherical centre
    threshold: float      # θ, cosine distance
    percentile: float | None  # None: not recorded (e.g. a published dictionary)
    n_tokens: int | None      # rows the calibration was estimated on (None: not recorded)
    batch_size: int = 1024
    seed: int = 0
    meta: dict = field(default_factory=dict)  # provenance: model, layer, extractor params...
    protocol: str = "rows"            # how θ's batches were cut: "documents" (the paper) or "rows"
    docs_per_batch: int | None = None  # documents per batch under the "documents" protocol

    RECORD = ("percentile", "n_tokens", "batch_size", "seed", "meta", "protocol", "docs_per_batch")

    @property
    def dim(self) -> int:
        return int(self.centre.shape[0])

    def directions(self, acts) -> torch.Tensor:
        """acts [N, d] -> [N, d] centred unit rows."""
        return to_directions(acts, self.centre)

    def __repr__(self) -> str:
        return (f"Calibration(dim={self.dim}, threshold={self.threshold:.6g}, "
                f"percentile={self.percentile}, n_tokens={self.n_tokens}, protocol={self.protocol!r}, "
                f"meta={self.meta})")

    def record(self) -> dict:
        """Everything but the centre and θ, as JSON (a dictionary file keeps it as ``meta["calibration"]``)."""
        return {name: getattr(self, name) for name in self.RECORD}

    @classmethod
    def from_record(cls, centre: torch.Tensor, threshold: float, record: dict) -> Calibration:
        """Inverse of record(), given the centre and θ; settings the record lacks take their defaults."""
        known = {k: v for k, v in record.items() if k in cls.RECORD}
        return cls(centre=centre, threshold=float(threshold), **{"percentile": None, "n_tokens": None, **known})

    def save(self, path, key: dict | None = None) -> None:
        _save(self, Path(path), key)

    @classmethod
    def load(cls, path) -> Calibration:
        return _load(Path(path))[0]


def calibrate(acts, percentile: float, batch_size: int = 1024, seed: int = 0, meta: dict | None = None, *,
              docs_per_batch: int = 128, protocol: str | None = None, doc=None) -> Calibration:
    """Raw activations -> Calibration: the spherical centre of all rows and θ at the p-th percentile.

    ``acts`` is an ``ActivationBatch`` (rows that know their document) or an array [N, d] (then pass
    ``doc`` [N] to batch by documents). ``protocol``:
    - ``"documents"`` (the default when documents are known; the paper's): θ = mean over batches of
      ``docs_per_batch`` whole documents in stream order of the within-batch p-th percentile;
    - ``"rows"`` (the default for a plain array): batches of ``batch_size`` rows shuffled with ``seed``.

    >>> a = torch.tensor([[3.0, 1.0], [3.0, -1.0], [1.0, 3.0], [-1.0, 3.0]])
    >>> cal = calibrate(a, 50, doc=[0, 0, 1, 1])          # one batch holding both documents
    >>> cal.centre.tolist(), round(cal.threshold, 4), cal.protocol
    ([1.5, 1.5], 1.7412, 'documents')
    """
    p = _check_percentile(percentile)
    if doc is None and isinstance(acts, ActivationBatch):
        acts, doc = acts.acts, acts.doc
    protocol = protocol or ("rows" if doc is None else "documents")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "documents" and doc is None:
        raise ValueError("the 'documents' protocol needs each row's document: pass an ActivationBatch "
                         "(ep.token_activations) or doc=[N] indices, or use protocol='rows'")
    a = check_acts(acts)
    centre = spherical_centre(a)
    if protocol == "documents":
        doc = torch.as_tensor(doc)
        if doc.shape != (a.shape[0],):
            raise ValueError(f"doc must hold one document index per row ({a.shape[0]}), got shape {tuple(doc.shape)}")
        batches = document_batches(doc, docs_per_batch)
    else:
        batches = row_batches(a.shape[0], batch_size, seed)
    theta = percentile_threshold(to_directions(a, centre), p, batches=batches)
    if not theta > 1e-6:  # fp32 rounding puts identical directions at |distance| ~ 1e-7
        raise ValueError(f"degenerate threshold θ = {theta:.3g}: over {p:g}% of calibration pairs are "
                         "(near-)identical, e.g. repeated BOS activations; drop them or raise the percentile")
    return Calibration(centre=centre, threshold=theta, percentile=p, n_tokens=int(a.shape[0]),
                       batch_size=int(batch_size), seed=int(seed), meta=dict(meta or {}), protocol=protocol,
                       docs_per_batch=int(docs_per_batch) if protocol == "documents" else None)


# -----------------------------------------------------------------------------
# files and caching (the writers live in ep.method.files)

def _save(cal: Calibration, path: Path, key: dict | None) -> None:
    info = {"schema_version": SCHEMA_VERSION, "threshold": float(cal.threshold), **cal.record(), "key": key}
    save_arrays(path, {"centre": cal.centre.float()}, info, _META_KEY)


def _load(path: Path) -> tuple[Calibration, dict | None]:
    try:
        tensors, info = load_arrays(path, _META_KEY)
        if info.get("schema_version") not in (1, SCHEMA_VERSION):  # 1: before protocols (always "rows")
            raise ValueError(f"schema version {info.get('schema_version')} != {SCHEMA_VERSION}")
        centre = tensors["centre"]
        if centre.ndim != 1 or centre.dtype != torch.float32:
            raise ValueError(f"bad centre: {centre.dtype} {tuple(centre.shape)}")
        cal = Calibration.from_record(centre, float(info["threshold"]), info)
    except Exception as e:
        raise ValueError(f"{path}: not a valid calibration file ({type(e).__name__}: {e})") from e
    return cal, info.get("key")


def cached_calibration(key: dict, compute: Callable[[], Calibration], cache_dir) -> Calibration:
    """
    Return the calibration cached under `key`, or compute() it and cache it.
    `key` must hold everything the calibration depends on (model, layer, extractor,
    corpus, n tokens, percentile, seed...) and be JSON-serialisable. The file name is
    the key's sha256; a file whose stored key differs (or that is unreadable) is ignored
    and overwritten.
    """
    canon = canonical_json(key)
    path = Path(cache_dir) / f"calibration-{key_hash(key)[:16]}.safetensors"
    if path.exists():
        try:
            cal, stored = _load(path)
            if canonical_json(stored) == canon:
                return cal
        except ValueError as e:
            warnings.warn(f"ignoring unreadable calibration cache: {e}", stacklevel=2)
    cal = compute()
    if not isinstance(cal, Calibration):
        raise TypeError(f"compute() must return a Calibration, got {type(cal).__name__}")
    _save(cal, path, json.loads(canon))
    return cal
