"""
The paper's published dictionaries, opened without running any code from the file.

The authors publish prebuilt Gemma-2-2B / -2b-it dictionaries on the Hugging Face hub (dataset
``J-RUM/exemplar-partitioning``, one folder ``{model}_L{layer}_p{p}/`` per build) as Python pickles of
their ``ep.discovery.dictionary.Dictionary``. Their loader unpickles the file, and an ordinary unpickle
calls whatever functions the file names: a hostile file in that layout runs its payload on load.

Here a restricted unpickler resolves only the globals those files need (numpy's array reconstruction and
dtype, in the numpy 1.x and 2.x module spellings and both pickle-protocol forms; sets and bytes; the two
official classes, also under their legacy ``cas.*`` / ``ConceptLibrary`` / ``Concept`` names), each mapped
to an inert function or class of ours that checks its arguments. Any other global raises
DictionaryFormatError before anything is called. The fields are then converted to this package's
Dictionary (schema 2: the official contexts are (distance, prompt text, token position) heaps, so the
prompt texts become ``documents``) and cached as safetensors keyed by the file's sha256 and the schema.

Memory: the unpickled arrays are views on the file's own byte buffers (no second copy of them), and the
conversion copies only the exemplar and mean directions (2·K·d floats), not the 30 sampled members per
region. The unpickler keeps every object until the load ends, so peak memory is still about 1.5x the file
(measured: a 368 MB file in this layout, +533 MB): budget ~9 GB of RAM for a p1 file, once; later opens
read the cached safetensors (K·d floats, a few % of the pickle).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .dictionary import SCHEMA_VERSION, Dictionary, DictionaryFormatError
from .files import cache_dir, sha256_file

REPO_ID = "J-RUM/exemplar-partitioning"
# (model, layer) -> percentiles published (the official README's "Prebuilt dictionaries" table): 13 builds
PUBLISHED: dict[tuple[str, int], tuple[int, ...]] = {
    ("gemma-2-2b", 12): (1, 2, 4, 8, 10),
    ("gemma-2-2b", 20): (10,),
    ("gemma-2-2b-it", 4): (4,),
    ("gemma-2-2b-it", 12): (10,),
    ("gemma-2-2b-it", 20): (1, 2, 4, 8, 10),
}
APPROX_SIZE = {1: "~6 GB", 10: "~65 MB"}  # the official README's figures (p1 and p10)


# The offline mirror's stand-ins ($EP_DATA_DIR/ep_hub/): Gemma 3 270M layer 9 at these percentiles, made by the
# official code in the published layout (see the mirror's ep_hub/README.md)
STAND_IN = ("gemma-3-270m", 9, (2, 4, 10))
# short name -> the model to load for text and new inputs (the Gemma-2 ones are gated: licence + HF_TOKEN)
MODELS = {"gemma-3-270m": "gemma-3-270m", "gemma-2-2b": "google/gemma-2-2b", "gemma-2-2b-it": "google/gemma-2-2b-it"}


def stand_ins_here() -> bool:
    """Whether ``$EP_DATA_DIR/ep_hub`` holds the offline stand-ins."""
    root = os.environ.get("EP_DATA_DIR")
    model, layer, ps = STAND_IN
    return bool(root) and all((Path(root) / "ep_hub" / hub_paths(model, layer, p)[0]).exists() for p in ps)


def choose(model_short: str | None = None, layer: int | None = None, percentile: int = 10,
           compare_with: list | None = None, model_name: str | None = "auto") -> dict:
    """What notebook 00 opens when its parameters say None / "auto": the mirror's stand-ins when a mirror holds
    them, else the paper's published ``gemma-2-2b`` layer 12 (and ``gemma-2-2b-it`` layer 12 to compare with).

    Returns ``{"model_short", "layer", "percentile", "compare_with": [(model, layer, p), ...], "model_name"}``;
    ``model_name`` "auto" names the model the dictionary was built on (None: no model)."""
    offline = stand_ins_here()
    model_short = model_short or (STAND_IN[0] if offline else "gemma-2-2b")
    if layer is None:
        layer = STAND_IN[1] if model_short == STAND_IN[0] else 12
    if compare_with is None:
        if (model_short, layer) == STAND_IN[:2]:
            compare_with = [(model_short, layer, p) for p in STAND_IN[2] if p != percentile]
        else:  # the same layer of the base / instruction-tuned sibling, where it is published
            sibling = model_short[:-3] if model_short.endswith("-it") else f"{model_short}-it"
            compare_with = [(sibling, layer, percentile)] if percentile in PUBLISHED.get((sibling, layer), ()) else []
    if model_name == "auto":
        model_name = MODELS.get(model_short, f"google/{model_short}")
    return {"model_short": model_short, "layer": int(layer), "percentile": int(percentile),
            "compare_with": [tuple(c) for c in compare_with], "model_name": model_name}


def hub_paths(model_short: str, layer: int, percentile) -> tuple[str, str]:
    """(pickle path, metadata JSON path) inside the dataset, exactly as the official from_hub names them."""
    folder = f"{model_short}_L{int(layer)}_p{int(percentile)}"
    return f"{folder}/{model_short}_layer{int(layer)}.pkl", f"{folder}/{model_short}_layer{int(layer)}_metadata.json"


# -- the restricted unpickler -----------------------------------------------------------------------------

_PLAIN_DTYPES = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248])$")  # bool, ints, floats: never object dtypes


class _Dtype:
    """Inert stand-in for numpy.dtype(spec, align, copy) + its BUILD state: plain numeric dtypes only."""
    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str) or not _PLAIN_DTYPES.match(spec):
            raise DictionaryFormatError(f"refused dtype {spec!r}: only plain bool/int/float arrays are admitted")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # numpy writes (3, byteorder, None, None, None, -1, -1, flags): no fields, no subarray
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise DictionaryFormatError(f"refused dtype state {state!r}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _array(buf, dtype, shape, order) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, _Dtype) or order not in ("C", "F"):
        raise DictionaryFormatError("refused array: expected (bytes, plain dtype, shape, 'C'|'F')")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise DictionaryFormatError(f"refused array shape {shape!r}")
    return np.frombuffer(buf, dtype=dtype.dtype).reshape(shape, order=order)


def _frombuffer(buf, dtype, shape, order):  # numpy(._core|.core).numeric._frombuffer (protocol 5)
    return _array(buf, dtype, shape, order)


class _NdarrayMarker:
    """What numpy.ndarray resolves to: only usable as _reconstruct's first argument."""


class _ArrayState:
    """numpy(.core|._core).multiarray._reconstruct(ndarray, (0,), b'b') then BUILD (1, shape, dtype, fortran, raw)."""
    __slots__ = ("array",)

    def __init__(self, cls, shape, typecode):
        if cls is not _NdarrayMarker:
            raise DictionaryFormatError("refused _reconstruct of anything but numpy.ndarray")
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise DictionaryFormatError("refused ndarray state")
        _, shape, dtype, fortran, raw = state
        self.array = _array(raw, dtype, shape, "F" if fortran else "C")


def _scalar(dtype, raw):  # numpy(.core|._core).multiarray.scalar(dtype, bytes) -> a Python number
    if not isinstance(dtype, _Dtype) or not isinstance(raw, bytes) or len(raw) != dtype.dtype.itemsize:
        raise DictionaryFormatError("refused numpy scalar")
    return np.frombuffer(raw, dtype=dtype.dtype)[0].item()


def _encode(text, encoding="utf-8"):  # _codecs.encode: how protocol 2 writes bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DictionaryFormatError("refused _codecs.encode call")
    return text.encode("latin1")


def _container(kind):
    def make(items=()):
        if not isinstance(items, (list, tuple, set, frozenset, bytes)):
            raise DictionaryFormatError(f"refused {kind.__name__}({type(items).__name__})")
        return kind(items)
    return make


class _Admitted:
    """An admitted callable. Immutable, and a BUILD on it is refused (no tampering with our functions)."""
    __slots__ = ("fn", "name")

    def __init__(self, fn, name):
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "name", name)

    def __call__(self, *args):
        return self.fn(*args)

    def __setattr__(self, key, value):
        raise DictionaryFormatError(f"refused attribute write on {self.name}")

    def __setstate__(self, state):
        raise DictionaryFormatError(f"refused BUILD on {self.name}")


class OfficialPartition:
    """Inert stand-in for the official Partition: holds the fields the file gives, nothing runs."""

    def __setstate__(self, state):
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise DictionaryFormatError("refused Partition state: expected a dict of fields")
        self.fields = state


class OfficialDictionary(OfficialPartition):
    """Inert stand-in for the official Dictionary (``center``, ``threshold``, ``partitions``, ...)."""


_NUMPY = ("numpy", "numpy._core.numeric", "numpy.core.numeric", "numpy._core.multiarray", "numpy.core.multiarray")
_OFFICIAL = ("ep.discovery.dictionary", "cas.discovery.dictionary")
_ADMITTED = {
    **{(m, "_frombuffer"): _Admitted(_frombuffer, "numpy _frombuffer") for m in _NUMPY},
    **{(m, "_reconstruct"): _ArrayState for m in _NUMPY},
    **{(m, "scalar"): _Admitted(_scalar, "numpy scalar") for m in _NUMPY},
    ("numpy", "dtype"): _Dtype,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("_codecs", "encode"): _Admitted(_encode, "_codecs.encode"),
    ("builtins", "set"): _Admitted(_container(set), "set"),
    ("builtins", "frozenset"): _Admitted(_container(frozenset), "frozenset"),
    ("builtins", "bytearray"): _Admitted(_container(bytearray), "bytearray"),
    **{(m, n): OfficialDictionary for m in _OFFICIAL for n in ("Dictionary", "ConceptLibrary")},
    **{(m, n): OfficialPartition for m in _OFFICIAL for n in ("Partition", "Concept")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:  # protocol <= 2 writes Python 2's spelling of builtins
            return _ADMITTED[("builtins" if module == "__builtin__" else module, name)]
        except KeyError:
            raise DictionaryFormatError(f"refused global {module}.{name}: not one a published dictionary needs "
                                        "(nothing was executed)") from None

    def persistent_load(self, pid):
        raise DictionaryFormatError("refused persistent id")


def read_official(file) -> OfficialDictionary:
    """A published pickle (path, bytes or binary file) -> its fields, through the restricted unpickler."""
    if isinstance(file, bytes):
        file = io.BytesIO(file)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return read_official(f)
    try:
        obj = _RestrictedUnpickler(file).load()
    except DictionaryFormatError:
        raise
    except Exception as e:  # truncated, malformed, or a call with arguments we refuse
        raise DictionaryFormatError(f"not a readable published dictionary ({type(e).__name__}: {e})") from e
    if not isinstance(obj, OfficialDictionary):
        raise DictionaryFormatError(f"the file holds a {type(obj).__name__}, not an official Dictionary")
    return obj


# -- conversion ------------------------------------------------------------------------------------------

def _as_array(x, name: str) -> np.ndarray:
    x = x.array if isinstance(x, _ArrayState) else x
    if not isinstance(x, np.ndarray):
        raise DictionaryFormatError(f"{name}: expected an array, got {type(x).__name__}")
    return x


def _field(obj, name: str, kind=None):
    if name not in obj.fields:
        raise DictionaryFormatError(f"official {type(obj).__name__[8:]} has no field {name!r}")
    value = obj.fields[name]
    if kind is not None and not isinstance(value, kind):
        raise DictionaryFormatError(f"field {name!r}: expected {kind}, got {type(value).__name__}")
    return value


def _heap(entries, name: str, sign: float) -> list[tuple[float, str, int]]:
    """An official prompt heap -> (distance >= 0, prompt, position) sorted as closest_/farthest_prompts do."""
    if not isinstance(entries, list) or not all(
            isinstance(e, tuple) and len(e) == 3 and isinstance(e[0], (int, float)) and isinstance(e[1], str)
            and isinstance(e[2], int) for e in entries):
        raise DictionaryFormatError(f"{name}: expected a list of (distance, prompt, position)")
    return sorted(((max(0.0, sign * d), text, pos) for d, text, pos in entries), key=lambda t: t[0], reverse=sign > 0)


def convert(official: OfficialDictionary, meta: dict | None = None) -> Dictionary:
    """Official fields -> ep.Dictionary. exemplar_direction -> exemplars, mean_member_direction ->
    mean_directions, member_count -> counts, member_coherence -> coherence, constituent_sample_indices[0]
    -> exemplar_index, sample_prompts / boundary_prompts -> nearest / farthest contexts (doc = index into
    ``documents``, the distinct prompt texts; token id not stored: -1). The exemplar's own context is the
    nearest member at distance 0 (the official heaps include the exemplar itself)."""
    centre = _as_array(_field(official, "center"), "center").astype(np.float32)
    threshold = _field(official, "threshold", (int, float))
    parts = _field(official, "partitions", list)
    if not parts or not all(isinstance(p, OfficialPartition) and not isinstance(p, OfficialDictionary)
                            for p in parts):
        raise DictionaryFormatError("partitions: expected a non-empty list of official Partitions")
    K, d = len(parts), centre.shape[0]
    near = [_heap(_field(p, "sample_prompts"), "sample_prompts", -1.0) for p in parts]
    far = [_heap(_field(p, "boundary_prompts"), "boundary_prompts", 1.0) for p in parts]
    S = max(1, max(len(h) for h in near + far))
    docs: dict[str, int] = {}
    arrays = {"exemplars": np.empty((K, d), np.float32), "mean_directions": np.empty((K, d), np.float32),
              "counts": np.empty(K, np.int64), "coherence": np.empty(K, np.float32),
              "exemplar_context": np.full((K, 3), -1, np.int64), "exemplar_index": np.full(K, -1, np.int64),
              "nearest_contexts": np.full((K, S, 4), -1, np.int64),
              "farthest_contexts": np.full((K, S, 4), -1, np.int64),
              "nearest_dist": np.full((K, S), np.nan, np.float32), "farthest_dist": np.full((K, S), np.nan, np.float32)}
    labels = {}
    for k, p in enumerate(parts):
        for ours, theirs in (("exemplars", "exemplar_direction"), ("mean_directions", "mean_member_direction")):
            v = _as_array(_field(p, theirs), theirs)
            if v.shape != (d,):
                raise DictionaryFormatError(f"partition {k}: {theirs} has shape {v.shape}, expected ({d},)")
            arrays[ours][k] = v
        arrays["counts"][k] = _field(p, "member_count", int)
        arrays["coherence"][k] = _field(p, "member_coherence", (int, float))
        members = p.fields.get("constituent_sample_indices") or []
        if members and isinstance(members[0], int):
            arrays["exemplar_index"][k] = members[0]
        for heap, ctx, dist in ((near[k], "nearest_contexts", "nearest_dist"),
                                (far[k], "farthest_contexts", "farthest_dist")):
            for j, (distance, text, pos) in enumerate(heap):
                arrays[ctx][k, j, :2] = docs.setdefault(text, len(docs)), pos
                arrays[dist][k, j] = distance
        if near[k] and near[k][0][0] <= 1e-6:  # the exemplar itself, at distance 0
            arrays["exemplar_context"][k, :2] = arrays["nearest_contexts"][k, 0, :2]
        if isinstance(p.fields.get("label"), str):
            labels[k] = p.fields["label"]
    info = {"source": "official pickle", "official_fields": sorted(official.fields),
            "merge_close": official.fields.get("merge_close"), **({"labels": labels} if labels else {}),
            **(meta or {})}
    return Dictionary(centre=torch.from_numpy(centre.copy()), threshold=float(threshold),
                      **{k: torch.from_numpy(v) for k, v in arrays.items()}, meta=info, documents=list(docs))


# -- files, cache, hub ------------------------------------------------------------------------------------

def open_published(pkl_path, meta: dict | None = None, cache: Path | None = None, digest: str | None = None
                   ) -> Dictionary:
    """
    A published pickle on disk -> Dictionary, safely. The conversion is cached as
    ``{sha256}_schema{N}.safetensors`` (in ``cache``, default $EP_CACHE_DIR/published), so a second
    open reads safetensors only. ``meta`` (e.g. the metadata JSON) is kept in the result's meta.
    """
    pkl_path = Path(pkl_path)
    digest = digest or sha256_file(pkl_path)
    target = Path(cache or cache_dir() / "published") / f"{digest}_schema{SCHEMA_VERSION}.safetensors"
    if target.exists():
        try:
            return Dictionary.load(target)
        except DictionaryFormatError:
            pass  # a damaged cache entry: convert again
    d = convert(read_official(pkl_path), {"sha256": digest, "file": pkl_path.name, **(meta or {})})
    target.parent.mkdir(parents=True, exist_ok=True)
    d.save(target)
    return d


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _hub_trouble(error: BaseException) -> str:
    """What went wrong on the way from the hub, and what to do about it, in one sentence."""
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    status = next((r.status_code for e in chain if (r := getattr(e, "response", None)) is not None
                   and isinstance(getattr(r, "status_code", None), int)), None)
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if status in (401, 403) or "gated" in text:
        return (f"the hub refused access (HTTP {status}): accept the dataset's terms on its page with your account "
                "and give a read token as HF_TOKEN (https://huggingface.co/settings/tokens)")
    if status is not None and status >= 500:
        return f"the hub answered HTTP {status}, a server error on its side: try again in a few minutes"
    if "consistency check" in text or "incomplete" in text or "remoteprotocol" in text:
        return "the download was cut short (the connection dropped): run the same call again"
    if "timeout" in text or "timed out" in text:
        return ("the hub did not answer in time: check the connection and run again (HF_HUB_DOWNLOAD_TIMEOUT and "
                "HF_HUB_ETAG_TIMEOUT, in seconds, allow a slower link)")
    if status is not None:
        return f"the hub answered HTTP {status}"
    return "could not reach the hub: check the internet connection"


def from_hub(model_short: str | None = None, layer: int | None = None, percentile: int = 10, *,
             repo_id: str = REPO_ID, local_dir=None, cache: Path | None = None, verbose: bool = True) -> Dictionary:
    """
    The official ``Dictionary.from_hub``'s name and arguments (``ep.published.from_hub``). ``model_short`` and
    ``layer`` None resolve as notebook 00 does (``choose``): the mirror's stand-in when ``$EP_DATA_DIR`` holds
    it, else the paper's ``gemma-2-2b`` layer 12. Reads ``$EP_DATA_DIR/ep_hub/{model}_L{layer}_p{p}/...`` when that
    file exists (offline). Otherwise it asks the hub for the file's size and sha256 and, unless a conversion of
    that exact file is cached already, says the size, downloads it with huggingface_hub into a temporary folder,
    checks its sha256 against the hub's record, converts it (open_published: no code from the file runs) and
    caches only the conversion. The pickle itself is deleted afterwards, so a damaged or cut-off download never
    stays in any cache: the next call starts clean. Every failure raises one error that says what to do.
    """
    if model_short is None or layer is None:
        chosen = choose(model_short, layer, percentile, compare_with=[], model_name=None)
        model_short, layer = chosen["model_short"], chosen["layer"]
    pkl, meta_json = hub_paths(model_short, layer, percentile)
    root = Path(local_dir) if local_dir is not None else (
        Path(os.environ["EP_DATA_DIR"]) / "ep_hub" if os.environ.get("EP_DATA_DIR") else None)
    about = {"repo_id": repo_id, "path": pkl, "model": model_short, "layer": int(layer), "percentile": int(percentile)}
    if root is not None and (root / pkl).exists():
        return open_published(root / pkl, {**about, "offline_copy": str(root), **_read_meta(root / meta_json)}, cache)
    if int(percentile) not in PUBLISHED.get((model_short, int(layer)), ()):
        raise FileNotFoundError(f"{model_short} layer {layer} p{percentile} is not published (published: "
                                f"{sorted(PUBLISHED)} with percentiles {list(PUBLISHED.values())}); "
                                f"no offline copy at {root / pkl if root else '$EP_DATA_DIR/ep_hub/' + pkl}")
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError as e:
        raise ImportError("from_hub needs huggingface_hub online: pip install huggingface_hub") from e
    where = root / pkl if root else f"$EP_DATA_DIR/ep_hub/{pkl}"
    cache = Path(cache or cache_dir() / "published")
    try:
        info = {i.path: i for i in HfApi().get_paths_info(repo_id, [pkl], repo_type="dataset")}.get(pkl)
    except Exception as e:
        raise ConnectionError(f"could not fetch {repo_id}/{pkl}: {_hub_trouble(e)}. Offline, put the file at "
                              f"{where}") from e
    if info is None:
        raise FileNotFoundError(f"{repo_id} has no {pkl} (the hub lists no such file)")
    size, expected = getattr(info, "size", None), getattr(getattr(info, "lfs", None), "sha256", None)
    cached = cache / f"{expected}_schema{SCHEMA_VERSION}.safetensors"
    if expected and cached.exists():
        try:
            return Dictionary.load(cached)
        except DictionaryFormatError:
            pass  # a damaged cache entry: download and convert again
    if verbose:
        said = f"{size / 1e9:.2f} GB" if size else APPROX_SIZE.get(int(percentile), "size unknown")
        print(f"downloading {repo_id}/{pkl} ({said}; p1 files are ~6 GB, p10 ~65 MB); only its conversion is kept")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:  # removed whatever happens
        try:
            path = Path(hf_hub_download(repo_id=repo_id, filename=pkl, repo_type="dataset", local_dir=tmp))
        except Exception as e:
            raise ConnectionError(f"could not fetch {repo_id}/{pkl}: {_hub_trouble(e)}; nothing partial was kept. "
                                  f"Offline, put the file at {where}") from e
        try:
            meta = _read_meta(Path(hf_hub_download(repo_id=repo_id, filename=meta_json, repo_type="dataset",
                                                   local_dir=tmp)))
        except Exception:  # the metadata is a nicety: the pickle is what matters
            meta = {}
        digest = sha256_file(path)
        if expected and digest != expected:
            raise DictionaryFormatError(f"{pkl}: the download's sha256 {digest} differs from the hub's record "
                                        f"{expected}: it was damaged on the way and was not kept; run the same call "
                                        "again")
        return open_published(path, {**about, **meta}, cache, digest)
