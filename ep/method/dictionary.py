"""
The EP dictionary: a Voronoi partition of centred activation directions around the
exemplars found by one streaming pass of leader clustering (see builder.py).

Each region has an observed exemplar, a member count, the mean direction and coherence
||Σu|| / count of its members, and the contexts of its exemplar and of the S members nearest
to and farthest from it. Dictionary.assign gives the exact Voronoi cell of any token.
Files are one checksummed .safetensors file, byte-identical for identical inputs, loaded
without pickle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import check_acts, load_arrays, save_arrays, to_directions

SCHEMA_VERSION = 1
_META_KEY = "ep_dictionary"  # the single key in the safetensors __metadata__


class DictionaryFormatError(ValueError):
    """A dictionary file (or set of arrays) is truncated, corrupted or inconsistent."""


# name -> (dtype, shape); symbols: K regions, d model dim, S samples per region
_SPEC: dict[str, tuple[torch.dtype, tuple]] = {
    "centre": (torch.float32, ("d",)),
    "exemplars": (torch.float32, ("K", "d")),
    "counts": (torch.int64, ("K",)),
    "mean_directions": (torch.float32, ("K", "d")),
    "coherence": (torch.float32, ("K",)),
    "exemplar_context": (torch.int64, ("K", 3)),       # doc, pos, token
    "exemplar_index": (torch.int64, ("K",)),           # stream index of the exemplar token
    "nearest_contexts": (torch.int64, ("K", "S", 4)),  # doc, pos, token, stream index
    "nearest_dist": (torch.float32, ("K", "S")),
    "farthest_contexts": (torch.int64, ("K", "S", 4)),
    "farthest_dist": (torch.float32, ("K", "S")),
}


def _validate(arrays: dict[str, torch.Tensor], threshold) -> None:
    """Raise DictionaryFormatError unless the arrays form a consistent dictionary."""
    if set(arrays) != set(_SPEC):
        missing, extra = sorted(set(_SPEC) - set(arrays)), sorted(set(arrays) - set(_SPEC))
        raise DictionaryFormatError(f"arrays: missing {missing}, unexpected {extra}")
    if not (isinstance(threshold, float) and math.isfinite(threshold) and threshold > 0):
        raise DictionaryFormatError(f"threshold must be a finite float > 0, got {threshold!r}")
    shape = lambda name, i: arrays[name].shape[i] if arrays[name].ndim > i else -1
    dims = {"d": shape("centre", 0), "K": shape("counts", 0), "S": shape("nearest_dist", 1)}
    for name, (dtype, sym) in _SPEC.items():
        t, want = arrays[name], tuple(dims.get(s, s) for s in sym)
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != want:
            got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t)
            raise DictionaryFormatError(f"array {name!r}: expected {dtype} {want}, got {got}")
    if dims["K"] < 1 or dims["d"] < 1:
        raise DictionaryFormatError(f"empty dictionary (K={dims['K']}, d={dims['d']})")
    if bool((arrays["counts"] < 1).any()):
        raise DictionaryFormatError("every region must have at least one member")
    if not all(bool(torch.isfinite(arrays[n]).all()) for n in ("centre", "exemplars")):
        raise DictionaryFormatError("centre / exemplars contain NaN or inf")


@dataclass(eq=False)
class Dictionary:
    centre: torch.Tensor             # [d] float32 frozen spherical centre
    threshold: float                 # θ, cosine distance
    exemplars: torch.Tensor          # [K, d] float32 centred unit vectors
    counts: torch.Tensor             # [K] int64 members assigned at arrival
    mean_directions: torch.Tensor    # [K, d] float32 normalised Σ unit members
    coherence: torch.Tensor          # [K] float32 ||Σ unit members|| / count
    exemplar_context: torch.Tensor   # [K, 3] int64 doc, pos, token
    exemplar_index: torch.Tensor     # [K] int64 stream index of the exemplar
    nearest_contexts: torch.Tensor   # [K, S, 4] int64 doc, pos, token, stream index (-1 pad)
    nearest_dist: torch.Tensor       # [K, S] float32 cosine distance to the exemplar (NaN pad)
    farthest_contexts: torch.Tensor  # [K, S, 4]
    farthest_dist: torch.Tensor      # [K, S]
    meta: dict = field(default_factory=dict)  # provenance (JSON-serialisable)

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        _validate(self._arrays(), self.threshold)

    def _arrays(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _SPEC}

    @property
    def dim(self) -> int:
        return int(self.centre.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.nearest_dist.shape[1])

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __repr__(self) -> str:
        return (f"Dictionary(regions={len(self)}, dim={self.dim}, threshold={self.threshold:.6g}, "
                f"tokens={int(self.counts.sum())}, samples={self.n_samples})")

    def directions(self, acts) -> torch.Tensor:
        """acts [N, d] raw -> [N, d] float32 centred unit rows."""
        return to_directions(check_acts(acts, self.dim, allow_empty=True), self.centre)

    @torch.no_grad()
    def assign(self, acts, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """
        Voronoi assignment: acts [N, d] raw (numpy or torch) -> (region [N] int64, cosine
        distance to that region's exemplar [N] float32), both numpy. Ties go to the lower
        region id. Peak extra memory ~ batch_size × K × 4 bytes.
        """
        a = check_acts(acts, self.dim, allow_empty=True)
        ex = self.exemplars.to(a.device)  # [K, d]
        ids, dist = np.empty(a.shape[0], np.int64), np.empty(a.shape[0], np.float32)
        for s in range(0, a.shape[0], batch_size):
            sim, idx = (to_directions(a[s:s + batch_size], self.centre) @ ex.T).max(dim=1)
            ids[s:s + batch_size], dist[s:s + batch_size] = idx.cpu().numpy(), (1.0 - sim).cpu().numpy()
        return ids, dist

    def _info(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "threshold": self.threshold, "meta": self.meta}

    def save(self, path) -> None:
        """Atomically write one .safetensors file (arrays + checksummed JSON header)."""
        save_arrays(path, self._arrays(), self._info(), _META_KEY)

    @staticmethod
    def load(path) -> Dictionary:
        """Read and fully validate a file written by save(); raises DictionaryFormatError."""
        try:
            arrays, info = load_arrays(path, _META_KEY)
        except ValueError as e:
            raise DictionaryFormatError(f"{path}: {e}") from e
        if info.get("schema_version") != SCHEMA_VERSION:
            raise DictionaryFormatError(f"{path}: schema version {info.get('schema_version')!r}, "
                                        f"this code reads version {SCHEMA_VERSION}")
        if not isinstance(info.get("meta"), dict):
            raise DictionaryFormatError(f"{path}: missing provenance metadata")
        _validate(arrays, info.get("threshold"))
        return Dictionary(threshold=info["threshold"], meta=info["meta"], **arrays)
