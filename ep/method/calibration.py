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

from .files import atomic_write_bytes, canonical_json, key_hash, load_arrays, save_arrays  # noqa: F401 (re-exported)

SCHEMA_VERSION = 1
_META_KEY = "ep_calibration"  # the single key in the safetensors __metadata__


def check_acts(acts, dim: int | None = None, name: str = "acts", allow_empty: bool = False) -> torch.Tensor:
    """numpy / torch [N, d] -> float torch tensor (no copy if possible), with clear errors."""
    t = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.asarray(acts))
    if t.ndim != 2 or (dim is not None and t.shape[1] != dim):
        raise ValueError(f"{name} must have shape [N, {dim or 'd'}], got {tuple(t.shape)}")
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 rows)")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def spherical_centre(acts, chunk_size: int = 65536) -> torch.Tensor:
    """
    acts [N, d] -> centre [d] float32.
    direction = normalised mean of a/||a||; magnitude = <mean(a), direction>;
    centre = magnitude * direction. Accumulated in float64, chunked over rows.
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
    """acts [N, d] raw, centre [d] -> u [N, d] float32 centred unit rows (zero rows stay 0)."""
    a = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.asarray(acts))
    c = torch.as_tensor(centre).to(a.device, torch.float32)
    if a.ndim != 2 or a.shape[1] != c.shape[0]:
        raise ValueError(f"expected activations [N, {c.shape[0]}], got shape {tuple(a.shape)}")
    x = a.float() - c  # [N, d]
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check_percentile(percentile: float) -> float:
    p = float(percentile)
    if not 0.0 < p < 100.0:
        raise ValueError(f"percentile must be in the open interval (0, 100), got {percentile}")
    return p


def batch_percentiles(directions, percentile: float, batch_size: int = 1024,
                      seed: int = 0) -> np.ndarray:
    """
    The p-th percentile of within-batch pairwise cosine distances, one per batch.
    Rows are shuffled with `seed` and split into batches of `batch_size`; the ragged
    tail is dropped when at least one full batch exists (else one batch of all rows).
    Returns [n_batches] float64.
    """
    p = _check_percentile(percentile)
    u = check_acts(directions, name="directions").float()  # [N, d]
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    n = u.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 rows to measure pairwise distances, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(u.device)
    b = min(batch_size, n)
    n_batches = n // b
    iu = torch.triu_indices(b, b, offset=1, device=u.device)  # strict upper triangle
    out = np.empty(n_batches, dtype=np.float64)
    for i in range(n_batches):
        x = u[perm[i * b:(i + 1) * b]]                       # [b, d]
        dist = (1.0 - (x @ x.T)[iu[0], iu[1]]).clamp(0, 2)   # [b(b-1)/2] condensed pdist
        # numpy, not torch.quantile: the latter refuses inputs > 2**24 elements
        out[i] = np.percentile(dist.double().cpu().numpy(), p)
    return out


def percentile_threshold(directions, percentile: float, batch_size: int = 1024,
                         seed: int = 0) -> float:
    """θ = mean over calibration batches of the p-th percentile of pairwise cosine distance."""
    return float(batch_percentiles(directions, percentile, batch_size, seed).mean())


@dataclass(eq=False)
class Calibration:
    centre: torch.Tensor  # [d] float32 frozen spherical centre
    threshold: float      # θ, cosine distance
    percentile: float
    n_tokens: int         # rows the calibration was estimated on
    batch_size: int = 1024
    seed: int = 0
    meta: dict = field(default_factory=dict)  # provenance: model, layer, extractor params...

    @property
    def dim(self) -> int:
        return int(self.centre.shape[0])

    def directions(self, acts) -> torch.Tensor:
        """acts [N, d] -> [N, d] centred unit rows."""
        return to_directions(acts, self.centre)

    def __repr__(self) -> str:
        return (f"Calibration(dim={self.dim}, threshold={self.threshold:.6g}, "
                f"percentile={self.percentile:g}, n_tokens={self.n_tokens}, meta={self.meta})")

    def save(self, path, key: dict | None = None) -> None:
        _save(self, Path(path), key)

    @staticmethod
    def of(dictionary) -> Calibration:
        """The calibration a dictionary was built with (its centre, θ, and what its metadata recorded)."""
        meta = dictionary.meta
        return Calibration(centre=dictionary.centre, threshold=float(dictionary.threshold),
                           percentile=float(meta.get("percentile") or "nan"),
                           n_tokens=int(meta.get("calibration_tokens") or 0),
                           batch_size=int(meta.get("calibration_batch_size") or 1024),
                           seed=int(meta.get("calibration_seed") or 0))

    @staticmethod
    def load(path) -> Calibration:
        return _load(Path(path))[0]


def calibrate(acts, percentile: float, batch_size: int = 1024, seed: int = 0,
              meta: dict | None = None) -> Calibration:
    """acts [N, d] raw activations -> Calibration (centre + threshold)."""
    p = _check_percentile(percentile)
    a = check_acts(acts)
    centre = spherical_centre(a)
    theta = percentile_threshold(to_directions(a, centre), p, batch_size, seed)
    if not theta > 1e-6:  # fp32 rounding puts identical directions at |distance| ~ 1e-7
        raise ValueError(f"degenerate threshold θ = {theta:.3g}: over {p:g}% of calibration pairs are "
                         "(near-)identical, e.g. repeated BOS activations; drop them or raise the percentile")
    return Calibration(centre=centre, threshold=theta, percentile=p, n_tokens=int(a.shape[0]),
                       batch_size=int(batch_size), seed=int(seed), meta=dict(meta or {}))


# -----------------------------------------------------------------------------
# files and caching (the writers live in ep.method.files)

def _save(cal: Calibration, path: Path, key: dict | None) -> None:
    info = {"schema_version": SCHEMA_VERSION, "threshold": float(cal.threshold),
            "percentile": float(cal.percentile), "n_tokens": int(cal.n_tokens),
            "batch_size": int(cal.batch_size), "seed": int(cal.seed), "meta": cal.meta, "key": key}
    save_arrays(path, {"centre": cal.centre.float()}, info, _META_KEY)


def _load(path: Path) -> tuple[Calibration, dict | None]:
    try:
        tensors, info = load_arrays(path, _META_KEY)
        if info.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {info.get('schema_version')} != {SCHEMA_VERSION}")
        centre = tensors["centre"]
        if centre.ndim != 1 or centre.dtype != torch.float32:
            raise ValueError(f"bad centre: {centre.dtype} {tuple(centre.shape)}")
        cal = Calibration(centre=centre, threshold=float(info["threshold"]),
                          percentile=float(info["percentile"]), n_tokens=int(info["n_tokens"]),
                          batch_size=int(info["batch_size"]), seed=int(info["seed"]),
                          meta=info["meta"])
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
