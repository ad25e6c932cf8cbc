"""Tests for ep.method.published: the paper's published dictionaries opened without running their code.

The expected values come from an ordinary unpickle of the official files (made by the official code, see
$EP_DATA_DIR/ep_hub/README.md) with small stand-in classes registered under the official names here only.
"""

import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import ep
import ep.method.published as pub
from ep.method.dictionary import Dictionary, DictionaryFormatError

HUB = (ep.data.data_dir() or Path("/no offline mirror")) / "ep_hub"  # no mirror: the module is skipped
FILES = {p: HUB / f"gemma-3-270m_L9_p{p}" / "gemma-3-270m_layer9.pkl" for p in (10, 2, 4)}
pytestmark = pytest.mark.skipif(not all(f.exists() for f in FILES.values()), reason="needs $EP_DATA_DIR/ep_hub")


class RefPartition:  # what the official class holds: its fields, as attributes
    def __setstate__(self, state):
        self.__dict__.update(state)


class RefDictionary(RefPartition):
    pass


OFFICIAL_NAMES = {RefDictionary: ("ep.discovery.dictionary", "Dictionary"),
                  RefPartition: ("ep.discovery.dictionary", "Partition")}


class RefUnpickler(pickle.Unpickler):
    """An ordinary unpickle (numpy resolves normally) with the official classes mapped to the stand-ins."""

    def find_class(self, module, name):
        if module in ("ep.discovery.dictionary", "cas.discovery.dictionary"):
            return RefDictionary if name in ("Dictionary", "ConceptLibrary") else RefPartition
        return super().find_class(module, name)


def reference(path) -> RefDictionary:
    with open(path, "rb") as f:
        return RefUnpickler(f).load()


class OfficialNamePickler(pickle._Pickler):
    """Writes the stand-ins (and any test payload) under names we choose: files in the official layout."""

    names = dict(OFFICIAL_NAMES)

    def save_global(self, obj, name=None):
        if obj in self.names:
            module, name = self.names[obj]
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def repickle(obj, extra_names=None) -> bytes:
    buf = io.BytesIO()
    pickler = OfficialNamePickler(buf, protocol=5)
    pickler.names = {**OFFICIAL_NAMES, **(extra_names or {})}
    pickler.dump(obj)
    return buf.getvalue()


@pytest.fixture(scope="module", params=sorted(FILES))
def pair(request, tmp_path_factory):
    path = FILES[request.param]
    return reference(path), pub.open_published(path, cache=tmp_path_factory.mktemp("cache"))


# -- the equality test -----------------------------------------------------------------------------------

def test_equals_what_the_official_class_holds(pair):
    ref, d = pair
    parts = ref.partitions
    assert isinstance(d, Dictionary) and len(d) == len(parts) > 400
    np.testing.assert_array_equal(d.centre.numpy(), ref.center)
    assert d.threshold == ref.threshold
    np.testing.assert_array_equal(d.exemplars.numpy(), np.stack([p.exemplar_direction for p in parts]))
    np.testing.assert_array_equal(d.exemplars.numpy(), ref._exemplars[:len(parts)])  # the official buffer agrees
    np.testing.assert_array_equal(d.mean_directions.numpy(), np.stack([p.mean_member_direction for p in parts]))
    np.testing.assert_array_equal(d.counts.numpy(), [p.member_count for p in parts])
    np.testing.assert_array_equal(d.coherence.numpy(), np.float32([p.member_coherence for p in parts]))
    np.testing.assert_array_equal(d.exemplar_index.numpy(), [p.constituent_sample_indices[0] for p in parts])
    for k, p in enumerate(parts):
        closest = sorted(((max(0.0, -x), t, pos) for x, t, pos in p.sample_prompts), key=lambda e: e[0])
        farthest = sorted(((max(0.0, x), t, pos) for x, t, pos in p.boundary_prompts), key=lambda e: -e[0])
        for heap, ctx, dist in ((closest, d.nearest_contexts, d.nearest_dist),
                                (farthest, d.farthest_contexts, d.farthest_dist)):
            got = [(float(dist[k, j]), d.documents[int(ctx[k, j, 0])], int(ctx[k, j, 1])) for j in range(len(heap))]
            assert got == [(float(np.float32(x)), t, pos) for x, t, pos in heap], k
            assert (ctx[k, len(heap):] == -1).all() and torch.isnan(dist[k, len(heap):]).all()
        assert closest[0][0] == 0.0  # the exemplar is in its own heap, at distance 0: its context
        assert (d.documents[int(d.exemplar_context[k, 0])], int(d.exemplar_context[k, 1])) == closest[0][1:]
    assert set(d.documents) == {t for p in parts for _, t, _ in p.sample_prompts + p.boundary_prompts}


def test_region_shows_prompt_texts(pair):
    ref, d = pair
    k = int(d.counts.argmax())
    region = d.region(k)
    assert region.count == ref.partitions[k].member_count
    assert region.exemplar.document == d.documents[int(d.exemplar_context[k, 0])]
    assert "token" in region._repr_html_() and str(region).startswith(f"Region {k}")
    # the exemplar's own entry is not repeated among the nearest members
    assert len(region.nearest) == min(10, len(ref.partitions[k].sample_prompts)) - 1


def test_roundtrip_and_cache(tmp_path, monkeypatch):
    d = pub.open_published(FILES[10], {"note": "x"}, cache=tmp_path)
    cached = list(tmp_path.glob("*.safetensors"))
    assert [c.name for c in cached] == [f"{pub.sha256_file(FILES[10])}_schema{ep.method.dictionary.SCHEMA_VERSION}"
                                        ".safetensors"]
    monkeypatch.setattr(pub, "read_official", lambda *a: pytest.fail("converted again despite the cache"))
    again = pub.open_published(FILES[10], cache=tmp_path)
    for name in ("centre", "exemplars", "counts", "nearest_contexts", "farthest_dist", "exemplar_context"):
        torch.testing.assert_close(getattr(again, name), getattr(d, name), rtol=0, atol=0, equal_nan=True)
    assert again.documents == d.documents and again.meta == d.meta and d.meta["note"] == "x"


def test_from_hub_offline(tmp_path):
    d = ep.published.from_hub("gemma-3-270m", 9, 4, cache=tmp_path)
    assert d.meta["percentile"] == 4 and d.meta["discovery"]["n_partitions"] == len(d)
    assert d.meta["sha256"] == pub.sha256_file(FILES[4])
    default = ep.published.from_hub(percentile=4, cache=tmp_path)  # no name: the mirror's stand-in, as 00 opens
    assert (default.meta["model"], default.meta["layer"]) == ("gemma-3-270m", 9)
    assert torch.equal(default.counts, d.counts)
    assert d.config is None  # the official build's record is not an ep.build config
    with pytest.raises(FileNotFoundError, match="not published"):
        ep.published.from_hub("gemma-3-270m", 9, 7, cache=tmp_path)


def test_unpublished_names_fail_before_any_download(monkeypatch):
    """The download path itself is tested over real HTTP against a local stand-in of the hub (tests/test_online.py)."""
    monkeypatch.delenv("EP_DATA_DIR")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail differently
    with pytest.raises(FileNotFoundError, match="not published"):
        ep.published.from_hub("gemma-2-2b", 12, 3)


def test_choose_offline_stand_ins_or_the_published_files(monkeypatch):
    assert pub.stand_ins_here()
    here = pub.choose()
    assert here == {"model_short": "gemma-3-270m", "layer": 9, "percentile": 10, "model_name": "gemma-3-270m",
                    "compare_with": [("gemma-3-270m", 9, 2), ("gemma-3-270m", 9, 4)]}
    monkeypatch.delenv("EP_DATA_DIR")
    online = pub.choose()
    assert online == {"model_short": "gemma-2-2b", "layer": 12, "percentile": 10, "model_name": "google/gemma-2-2b",
                      "compare_with": [("gemma-2-2b-it", 12, 10)]}
    for model, layer, p in [(online["model_short"], online["layer"], online["percentile"]), *online["compare_with"]]:
        assert p in pub.PUBLISHED[(model, layer)]
    assert pub.choose("gemma-2-2b-it", 20, 4, model_name=None)["compare_with"] == []  # base L20 has only p10
    assert pub.choose("gemma-2-2b", 20, 10, compare_with=[])["model_name"] == "google/gemma-2-2b"


def test_published_table():
    assert sum(len(p) for p in pub.PUBLISHED.values()) == 13
    assert pub.hub_paths("gemma-2-2b-it", 20, 1.0) == ("gemma-2-2b-it_L20_p1/gemma-2-2b-it_layer20.pkl",
                                                       "gemma-2-2b-it_L20_p1/gemma-2-2b-it_layer20_metadata.json")


def test_legacy_names_and_old_protocol(tmp_path):
    """Files naming cas.discovery.dictionary / ConceptLibrary / Concept, and protocol-2 numpy arrays."""
    ref = reference(FILES[2])
    names = {RefDictionary: ("cas.discovery.dictionary", "ConceptLibrary"),
             RefPartition: ("cas.discovery.dictionary", "Concept")}
    for protocol in (2, 4, 5):
        buf = io.BytesIO()
        pickler = OfficialNamePickler(buf, protocol=protocol)
        pickler.names = names
        pickler.dump(ref)
        raw = buf.getvalue()
        if protocol == 2:
            assert b"_reconstruct" in raw and b"_codecs" in raw
        d = pub.convert(pub.read_official(raw))
        np.testing.assert_array_equal(d.exemplars.numpy(), np.stack([p.exemplar_direction for p in ref.partitions]))
        np.testing.assert_array_equal(d.centre.numpy(), ref.center)


# -- hostile files ---------------------------------------------------------------------------------------

class Payload:
    """Pickles as `fn(*args)`: what a hostile file would make an ordinary unpickle call."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(marker: Path) -> dict[str, bytes]:
    m = str(marker)
    chain = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch " + m.encode()
             + b"'\ntR.")
    files = {
        "os.system": b"cos\nsystem\n(S'touch " + m.encode() + b"'\ntR.",
        "subprocess": pickle.dumps(Payload(subprocess.call, ["touch", m])),
        "builtins.exec": pickle.dumps(Payload(exec, f"open({m!r}, 'w').close()")),
        "builtins.eval": pickle.dumps(Payload(eval, f"open({m!r}, 'w').close()")),
        "reduce chain getattr(__import__('os'), 'system')": chain,
    }
    # a valid official file with one hostile global deep inside: a partition's label, and a prompt heap entry
    ref = reference(FILES[10])
    ref.partitions[300].label = Payload(os.system, f"touch {m}")
    files["nested: a label deep in a valid file"] = repickle(ref, {os.system: ("os", "system")})
    ref = reference(FILES[10])
    ref.partitions[-1].sample_prompts[0] = (0.0, Payload(eval, f"open({m!r}, 'w').close()"), 3)
    files["nested: a prompt heap entry"] = repickle(ref)
    return files


def test_hostile_pickles_refused_and_nothing_runs(tmp_path):
    armed = tmp_path / "armed"
    for name, raw in _hostile(armed).items():  # each payload is live: an ordinary unpickle runs it
        armed.unlink(missing_ok=True)
        try:
            RefUnpickler(io.BytesIO(raw)).load()
        except Exception:
            pass
        assert armed.exists(), f"{name}: the payload did not run under an ordinary unpickle"
    marker = tmp_path / "marker"
    for name, raw in _hostile(marker).items():
        with pytest.raises(DictionaryFormatError, match="refused global"):
            pub.read_official(raw)
        path = tmp_path / "hostile.pkl"
        path.write_bytes(raw)
        with pytest.raises(DictionaryFormatError):
            pub.open_published(path, cache=tmp_path / "cache")
        assert not marker.exists(), name
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_valid_repickle_is_accepted():
    """The refusals above are the payload's doing: the same file without it converts to the same dictionary."""
    ref = reference(FILES[10])
    d = pub.convert(pub.read_official(repickle(ref)))
    np.testing.assert_array_equal(d.exemplars.numpy(), np.stack([p.exemplar_direction for p in ref.partitions]))


@pytest.mark.parametrize("raw, match", [
    (b"cnumpy\ndtype\n(S'O8'\nI00\nI01\ntR.", "dtype"),                       # object arrays: refused
    (b"cnumpy\ndtype\n(S'f4'\nI00\nI01\ntR(I3\nS'|'\nNNN(dp0\ntb.", "dtype state"),  # fields in the state
    (b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.", "_codecs"),
    (b"cbuiltins\nset\n(cnumpy\ndtype\n(S'f4'\nI00\nI01\ntRtR.", "set"),
    (b"cnumpy._core.numeric\n_frombuffer\n(dp0\nS'a'\nI1\nsb.", "BUILD"),         # BUILD on an admitted function
    (b"cnumpy\nndarray\n(tR.", "not an official"),                            # an inert marker
    (b"\x80\x05K\x01.", "not an official Dictionary"),                         # valid pickle, wrong content
    (b"\x80\x05\x95", "not a readable"),                                       # truncated
    (b"P0\n.", "persistent"),
])
def test_malformed_and_misused_admitted_globals(raw, match):
    with pytest.raises(DictionaryFormatError, match=match):
        pub.read_official(raw)
