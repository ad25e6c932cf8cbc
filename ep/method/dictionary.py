"""
The EP dictionary: a Voronoi partition of centred activation directions around the
exemplars found by one streaming pass of leader clustering (see builder.py).

Each region has an observed exemplar, a member count, the mean direction and coherence
||Σu|| / count of its members, and the contexts of its exemplar and of the S members nearest
to and farthest from it. Dictionary.assign gives the exact Voronoi cell of any token.
Files are one checksummed .safetensors file, byte-identical for identical inputs, loaded
without pickle.

Schema 2 adds human-readable contexts, so a region can be shown without the documents:
``with_contexts(lookup)`` stores (left text, token, right text) for every stored context, and
``documents`` can hold the texts the ``doc`` column indexes (the published dictionaries keep
prompt texts, not token ids; ``ep.published.from_hub`` opens them). Schema 3 keeps the calibration's record nested in
``meta["calibration"]`` and, for a dictionary made by ``ep.build``, the ``BuildConfig`` in ``meta["config"]``
(``Dictionary.calibration`` and ``Dictionary.config`` give them back typed). Schema-1 and -2 files still load:
their flat ``calibration_*`` keys are moved into the nested record as they are read (``_upgrade_meta``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .assignment import Assignment, extract
from .calibration import Calibration, load_arrays, save_arrays, to_directions
from .config import BuildConfig
from .rows import check_acts

SCHEMA_VERSION = 3  # 3: meta["calibration"] nested; 2: + strings / documents and the *_text arrays; 1 and 2 still load
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


# schema 2: ids into the string table (left, token, right; -1 = not stored)
_TEXT_SPEC: dict[str, tuple[torch.dtype, tuple]] = {
    "exemplar_text": (torch.int64, ("K", 3)),
    "nearest_text": (torch.int64, ("K", "S", 3)),
    "farthest_text": (torch.int64, ("K", "S", 3)),
}
_STRING_TABLES = ("strings", "documents")  # each saved as <name>_utf8 [bytes] uint8 + <name>_offsets [n+1] int64


def pack_strings(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of str -> (utf8 bytes [B] uint8, offsets [n+1] int64): strings as safetensors arrays."""
    blobs = [t.encode("utf-8") for t in texts]
    offsets = torch.zeros(len(blobs) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(b) for b in blobs], dtype=torch.int64).cumsum(0)
    return torch.from_numpy(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()), offsets


def unpack_strings(utf8: torch.Tensor, offsets: torch.Tensor) -> list[str]:
    """Inverse of pack_strings; DictionaryFormatError on bad offsets or bytes."""
    if utf8.dtype != torch.uint8 or utf8.ndim != 1 or offsets.dtype != torch.int64 or offsets.ndim != 1:
        raise DictionaryFormatError("string table: expected uint8 bytes and int64 offsets")
    o = offsets.tolist()
    if not o or o[0] != 0 or o[-1] != utf8.numel() or any(b < a for a, b in zip(o, o[1:])):
        raise DictionaryFormatError("string table: offsets do not cover the bytes in order")
    raw = utf8.numpy().tobytes()
    try:
        return [raw[a:b].decode("utf-8") for a, b in zip(o, o[1:])]
    except UnicodeDecodeError as e:
        raise DictionaryFormatError(f"string table: not UTF-8 ({e})") from e


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


def _validate_text(d: Dictionary) -> None:
    """The schema-2 arrays: shapes, and every id inside the string table (or -1)."""
    K, S = len(d), d.n_samples
    for name, (dtype, sym) in _TEXT_SPEC.items():
        t, want = getattr(d, name), tuple({"K": K, "S": S}.get(s, s) for s in sym)
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != want:
            got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t)
            raise DictionaryFormatError(f"array {name!r}: expected {dtype} {want}, got {got}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= len(d.strings)):
            raise DictionaryFormatError(f"array {name!r}: ids outside the string table of {len(d.strings)}")
    if not all(isinstance(x, str) for x in [*d.strings, *d.documents]):
        raise DictionaryFormatError("strings / documents must be lists of str")
    docs = torch.cat([d.exemplar_context[:, 0], d.nearest_contexts[..., 0].reshape(-1),
                      d.farthest_contexts[..., 0].reshape(-1)])
    if d.documents and int(docs.max()) >= len(d.documents):
        raise DictionaryFormatError(f"a context names document {int(docs.max())} of {len(d.documents)}")


@dataclass
class Context:
    """One stored context of a region: where it was, how far from the exemplar, and its text if kept."""
    kind: str                  # "exemplar", "nearest" or "farthest"
    distance: float            # cosine distance to the region's exemplar (0 for the exemplar)
    doc: int                   # document index in the stream (-1: unknown)
    pos: int                   # token position in that document
    token: int                 # token id (-1: not stored, e.g. a published dictionary)
    text: tuple[str, str, str] | None  # (left, token, right), or None when not kept
    document: str | None = None        # the whole document's text, when only that is kept


_render_region: Callable | None = None  # Region -> HTML; ep.show.display registers it (the method layer has no HTML)


def register_region_renderer(render: Callable) -> None:
    """How a ``Region`` shows itself in a notebook (``_repr_html_``): ``render(region) -> str`` of HTML."""
    global _render_region
    _render_region = render


@dataclass
class Region:
    """One region of a Dictionary, ready to show: in a notebook its HTML repr is a card (drawn by ``ep.show``)."""
    index: int
    count: int
    coherence: float
    exemplar: Context
    nearest: list[Context]
    farthest: list[Context]

    def __repr__(self) -> str:
        show = lambda c: (repr("".join((c.text[0][-30:], "[[", c.text[1], "]]", c.text[2][:30]))) if c.text
                          else f"token {c.pos} of {c.document[:60]!r}" if c.document else f"doc {c.doc} pos {c.pos}")
        lines = [f"Region {self.index}: {self.count} members, coherence {self.coherence:.3f}",
                 f"  exemplar        {show(self.exemplar)}"]
        lines += [f"  {c.kind:8s} {c.distance:.3f}  {show(c)}" for c in self.nearest + self.farthest]
        return "\n".join(lines)

    def _repr_html_(self) -> str | None:
        """The card ``ep.show.display.region_html`` draws (``None``, the plain repr, before ``ep.show`` is imported)."""
        return None if _render_region is None else _render_region(self)


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
    # schema 2: human-readable contexts (see with_contexts); None -> nothing stored (-1)
    strings: list[str] = field(default_factory=list)      # the string table
    exemplar_text: torch.Tensor | None = None             # [K, 3] int64 ids: left, token, right
    nearest_text: torch.Tensor | None = None              # [K, S, 3]
    farthest_text: torch.Tensor | None = None             # [K, S, 3]
    documents: list[str] = field(default_factory=list)    # texts the doc column indexes (optional)

    def __post_init__(self) -> None:
        self.threshold = float(self.threshold)
        _validate({name: getattr(self, name) for name in _SPEC}, self.threshold)
        self.strings, self.documents = list(self.strings), list(self.documents)
        for name, shape in (("exemplar_text", (len(self), 3)), ("nearest_text", (len(self), self.n_samples, 3)),
                            ("farthest_text", (len(self), self.n_samples, 3))):
            if getattr(self, name) is None:
                setattr(self, name, torch.full(shape, -1, dtype=torch.int64))
        _validate_text(self)

    def _arrays(self) -> dict[str, torch.Tensor]:
        arrays = {name: getattr(self, name) for name in (*_SPEC, *_TEXT_SPEC)}
        for table in _STRING_TABLES:
            arrays[f"{table}_utf8"], arrays[f"{table}_offsets"] = pack_strings(getattr(self, table))
        return arrays

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

    def _context(self, kind: str, k: int, j: int, lookup) -> Context:
        if kind == "exemplar":
            (doc, pos, token), dist, ids = self.exemplar_context[k].tolist(), 0.0, self.exemplar_text[k].tolist()
        else:
            ctx, dists, text = {"nearest": (self.nearest_contexts, self.nearest_dist, self.nearest_text),
                                "farthest": (self.farthest_contexts, self.farthest_dist, self.farthest_text)}[kind]
            (doc, pos, token, _), dist, ids = ctx[k, j].tolist(), float(dists[k, j]), text[k, j].tolist()
        if min(ids) >= 0:
            triple = tuple(self.strings[i] for i in ids)
        elif lookup is not None and doc >= 0:
            triple = tuple(lookup(doc, pos))
        else:
            triple = None
        document = self.documents[doc] if triple is None and 0 <= doc < len(self.documents) else None
        return Context(kind, dist, doc, pos, token, triple, document)

    def region(self, k: int, lookup: Callable[[int, int], tuple[str, str, str]] | None = None) -> Region:
        """
        Region k: its exemplar, the stored members nearest to and farthest from it (with their
        text when kept, see with_contexts; else from ``lookup(doc, pos)`` if given). A Region
        shows itself as an HTML card in a notebook. Each context is listed once: a small region's
        nearest and farthest members overlap, and published files list the exemplar among its nearest.
        """
        k = int(k)
        if not 0 <= k < len(self):
            raise IndexError(f"region {k} out of range for a dictionary of {len(self)} regions")
        shown = {(int(self.exemplar_context[k, 0]), int(self.exemplar_context[k, 1]))}
        members = {}
        for kind, ctx in (("nearest", self.nearest_contexts), ("farthest", self.farthest_contexts)):
            rows = ctx[k, :, :2].tolist()
            where = [(j, (doc, pos)) for j, (doc, pos) in enumerate(rows) if doc >= 0]
            members[kind] = [self._context(kind, k, j, lookup) for j, key in where if key not in shown]
            shown |= {key for _, key in where}
        return Region(k, int(self.counts[k]), float(self.coherence[k]), self._context("exemplar", k, 0, lookup),
                      members["nearest"], members["farthest"])

    def with_contexts(self, lookup: Callable[[int, int], tuple[str, str, str]]) -> Dictionary:
        """
        A copy that keeps, for every stored context (exemplar, nearest, farthest), the text
        ``lookup(doc, pos) -> (left of the token, the token, right of it)``; saved in the file,
        so region(k) shows text without the documents. Strings are stored once each.
        """
        table: dict[str, int] = {s: i for i, s in enumerate(self.strings)}
        intern = lambda s: table.setdefault(str(s), len(table))

        def ids(doc_pos: torch.Tensor) -> torch.Tensor:  # [..., 2] -> [..., 3]
            flat = doc_pos.reshape(-1, 2).tolist()
            out = [[-1, -1, -1] if doc < 0 else [intern(s) for s in _triple(lookup(doc, pos))] for doc, pos in flat]
            return torch.tensor(out, dtype=torch.int64).reshape(*doc_pos.shape[:-1], 3)

        return dataclasses.replace(
            self, exemplar_text=ids(self.exemplar_context[:, :2]), nearest_text=ids(self.nearest_contexts[..., :2]),
            farthest_text=ids(self.farthest_contexts[..., :2]), strings=list(table))

    def neighbours(self, k: int, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The n regions whose exemplars are nearest to region k's: (ids [n], cosine distances [n])."""
        dist = 1.0 - (self.exemplars @ self.exemplars[int(k)]).double().numpy()  # [K]
        dist[int(k)] = np.inf
        order = np.argsort(dist, kind="stable")[:n]
        return order, dist[order]

    BASES = ("exemplar", "mean")

    def basis(self, name: str) -> torch.Tensor:
        """[K, d] unit directions in centred space: the regions' ``"exemplar"`` or their ``"mean"`` member direction
        (the one place a basis name is checked)."""
        if name not in self.BASES:
            raise ValueError(f"basis must be one of {self.BASES}, got {name!r}")
        return self.exemplars if name == "exemplar" else self.mean_directions

    def directions(self, acts) -> torch.Tensor:
        """acts [N, d] raw -> [N, d] float32 centred unit rows."""
        return to_directions(check_acts(acts, self.dim, allow_empty=True), self.centre)

    @torch.no_grad()
    def assign(self, acts, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """
        Voronoi assignment: acts [N, d] raw (numpy or torch) -> (region [N] int64, cosine
        distance to that region's exemplar [N] float32), both numpy. Ties go to the lower
        region id. Peak extra memory ~ batch_size × K × 4 bytes.

        Example, a dictionary with centre (0, 0) and exemplars e0 = (1, 0), e1 = (0, 1): (2, 0.2) is
        nearest e0 (cosine 0.995, distance 0.005), (-1, 1) nearest e1 (cosine 0.707, distance 0.293):

        >>> region, distance = d.assign(np.array([[2.0, 0.2], [-1.0, 1.0]]))  # doctest: +SKIP
        >>> region, distance.round(3)  # doctest: +SKIP
        (array([0, 1]), array([0.005, 0.293], dtype=float32))
        """
        a = check_acts(acts, self.dim, allow_empty=True)
        ex = self.exemplars.to(a.device)  # [K, d]
        ids, dist = np.empty(a.shape[0], np.int64), np.empty(a.shape[0], np.float32)
        for s in range(0, a.shape[0], batch_size):
            sim, idx = (to_directions(a[s:s + batch_size], self.centre) @ ex.T).max(dim=1)
            ids[s:s + batch_size], dist[s:s + batch_size] = idx.cpu().numpy(), (1.0 - sim).cpu().numpy()
        return ids, dist

    def assign_texts(self, model, texts, *, layer: int | None = None, context_length: int | None = None,
                     progress: bool = False) -> Assignment:
        """Run ``model`` on ``texts`` and assign every token: -> ``Assignment`` (tokens, regions, distances).

        The layer and the context length are the dictionary's own (its ``config``; a published dictionary's
        recorded layer and context length); pass them when the dictionary does not record them.

        >>> a = d.assign_texts(model, ["The river bank was flooded."])  # doctest: +SKIP
        >>> a.text(0)  # doctest: +SKIP
        [('The', 12, 0.41), (' river', 3, 0.22), ...]
        """
        config, recorded = self.config, self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}
        layer = layer if layer is not None else config.layer if config else self.meta.get("layer")
        if context_length is None:
            context_length = config.context_length if config else recorded.get("context_length")
        if layer is None or context_length is None:
            raise ValueError("this dictionary does not record its layer and context length: pass layer= and "
                             "context_length=")
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = extract(model, texts, int(layer), context_length=int(context_length), progress=progress,
                        exact_context=bool(config and config.exact_context))
        region, distance = self.assign(batch.acts)
        token = batch.token.numpy()
        return Assignment(doc=batch.doc.numpy(), pos=batch.pos.numpy(), token=token,
                          tokens=model.tokenizer.batch_decode([[int(t)] for t in token]), region=region,
                          distance=distance)

    def _info(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "threshold": self.threshold, "meta": self.meta}

    @property
    def has_text(self) -> bool:
        """True when every stored context carries its text (see with_contexts)."""
        return bool((self.exemplar_text >= 0).all())

    @property
    def config(self) -> BuildConfig | None:
        """The settings and provenance of the ``ep.build`` that made this dictionary; None if it was made otherwise
        (``build_dictionary``; a published dictionary, whose ``meta["config"]`` is the official build's record)."""
        record = self.meta.get("config")
        built = isinstance(record, dict) and {f.name for f in dataclasses.fields(BuildConfig)} <= set(record)
        return BuildConfig.from_dict(record) if built else None

    @property
    def calibration(self) -> Calibration:
        """The calibration the dictionary was built with: its centre, θ, and what the build recorded of the rest."""
        record = self.meta.get("calibration")
        return Calibration.from_record(self.centre, self.threshold, record if isinstance(record, dict) else {})

    def save(self, path) -> None:
        """Atomically write one .safetensors file (arrays + checksummed JSON header)."""
        save_arrays(path, self._arrays(), self._info(), _META_KEY)

    @classmethod
    def load(cls, path) -> Dictionary:
        """Read and fully validate a file written by save(); raises DictionaryFormatError."""
        try:
            arrays, info = load_arrays(path, _META_KEY)
        except ValueError as e:
            raise DictionaryFormatError(f"{path}: {e}") from e
        version = info.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise DictionaryFormatError(f"{path}: schema version {version} was written by a newer ep; this code "
                                        f"reads versions 1-{SCHEMA_VERSION}: upgrade ep to open it")
        if version not in range(1, SCHEMA_VERSION + 1) or isinstance(version, bool):
            raise DictionaryFormatError(f"{path}: schema version {version!r}, this code reads versions "
                                        f"1-{SCHEMA_VERSION}")
        if not isinstance(info.get("meta"), dict):
            raise DictionaryFormatError(f"{path}: missing provenance metadata")
        extra = {}
        if version >= 2:
            names = [*_TEXT_SPEC, *(f"{t}_{p}" for t in _STRING_TABLES for p in ("utf8", "offsets"))]
            if missing := [n for n in names if n not in arrays]:
                raise DictionaryFormatError(f"{path}: arrays: missing {missing}")
            extra = {name: arrays.pop(name) for name in _TEXT_SPEC}
            for t in _STRING_TABLES:
                extra[t] = unpack_strings(arrays.pop(f"{t}_utf8"), arrays.pop(f"{t}_offsets"))
        _validate(arrays, info.get("threshold"))
        return cls(threshold=info["threshold"], meta=_upgrade_meta(info["meta"], version), **arrays, **extra)


_FLAT_CALIBRATION = {"percentile": "percentile", "calibration_tokens": "n_tokens", "calibration_seed": "seed",
                     "calibration_batch_size": "batch_size", "calibration_protocol": "protocol",
                     "calibration_docs_per_batch": "docs_per_batch"}  # schema <= 2 key -> Calibration field


def _upgrade_meta(meta: dict, version: int) -> dict:
    """A schema-1/2 file's meta in the schema-3 shape: the builder's flat calibration keys (and its copy of θ)
    nested as ``meta["calibration"]``; ``ep.build``'s second copies of model, layer and context length dropped
    (its ``config`` holds them). A published conversion (no calibration keys) keeps its meta as it was."""
    if version >= 3 or "calibration_tokens" not in meta:
        return meta
    meta = dict(meta)
    record = {field: meta.pop(key) for key, field in _FLAT_CALIBRATION.items() if key in meta}
    for key in ("threshold", "schema_version"):  # the file's header holds both
        meta.pop(key, None)
    if isinstance(meta.get("config"), dict):
        for key in ("model", "layer", "context_length"):
            meta.pop(key, None)
    return {**meta, "calibration": {k: v for k, v in record.items() if v is not None}}


def _triple(t) -> tuple[str, str, str]:
    if not (isinstance(t, (tuple, list)) and len(t) == 3 and all(isinstance(s, str) for s in t)):
        raise ValueError(f"lookup(doc, pos) must return (left, token, right) strings, got {t!r}")
    return tuple(t)
