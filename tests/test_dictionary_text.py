"""Tests for the Dictionary file format's schema 2: human-readable contexts, region(k), old and newer files."""

import numpy as np
import pytest
import torch

import ep.method.dictionary as epd
from ep.method.builder import build_dictionary
from ep.method.calibration import calibrate, save_arrays
from ep.method.config import BuildConfig
from ep.method.dictionary import Dictionary, DictionaryFormatError, pack_strings, unpack_strings
from ep.model.activations import ActivationBatch as Batch
from ep.show.display import Contexts


@pytest.fixture(scope="module")
def small():
    g = np.random.default_rng(0)
    a = (3.0 * g.normal(size=(6, 12))[g.integers(0, 6, 400)] + g.normal(size=(400, 12)) + 4.0).astype(np.float32)
    i = torch.arange(len(a))
    batches = [Batch(torch.from_numpy(a[s:s + 100]), (i // 20)[s:s + 100], (i % 20)[s:s + 100], (i % 97)[s:s + 100])
               for s in range(0, len(a), 100)]
    return build_dictionary(batches, calibrate(a, 5.0, batch_size=200), n_samples=3, progress=False)


def lookup(doc, pos):
    return (f"left of {doc}:{pos} ", f"T{doc}.{pos}", " right <&>")


def test_pack_strings_roundtrip():
    texts = ["", "héllo ⏎", "a\nb", "", "x" * 1000]
    utf8, offsets = pack_strings(texts)
    assert utf8.dtype == torch.uint8 and offsets.tolist()[-1] == utf8.numel()
    assert unpack_strings(utf8, offsets) == texts
    assert unpack_strings(*pack_strings([])) == []
    with pytest.raises(DictionaryFormatError, match="offsets"):
        unpack_strings(utf8, offsets.flip(0))
    with pytest.raises(DictionaryFormatError, match="UTF-8"):
        unpack_strings(torch.tensor([0xFF], dtype=torch.uint8), torch.tensor([0, 1]))


def test_with_contexts_keeps_text_through_a_file(small, tmp_path):
    assert not small.has_text
    calls = []
    d = small.with_contexts(lambda doc, pos: calls.append((doc, pos)) or lookup(doc, pos))
    assert d.has_text and not small.has_text  # a copy; the original is untouched
    n_ctx = len(d) + int((small.nearest_contexts[..., 0] >= 0).sum() + (small.farthest_contexts[..., 0] >= 0).sum())
    assert len(calls) == n_ctx
    assert len(d.strings) == len(set(d.strings))  # each string stored once
    d.save(tmp_path / "d.safetensors")
    back = Dictionary.load(tmp_path / "d.safetensors")
    assert back.strings == d.strings and back.has_text
    for name in ("exemplar_text", "nearest_text", "farthest_text", "exemplars", "nearest_contexts"):
        torch.testing.assert_close(getattr(back, name), getattr(d, name), rtol=0, atol=0)
    k = int(small.counts.argmax())
    r = back.region(k)
    doc, pos, _ = small.exemplar_context[k].tolist()
    assert r.exemplar.text == lookup(doc, pos) and r.count == int(small.counts[k])
    near = [c for c in small.nearest_contexts[k].tolist() if c[0] >= 0]
    assert [c.text for c in r.nearest] == [lookup(dc, p) for dc, p, _, _ in near]
    assert [c.distance for c in r.nearest] == pytest.approx(small.nearest_dist[k, :len(near)].tolist())
    nf = [(c.doc, c.pos) for c in r.nearest + r.farthest]
    assert len(nf) == len(set(nf)) and (r.exemplar.doc, r.exemplar.pos) not in nf  # each context listed once
    small_k = int(np.nonzero(small.counts.numpy() == 2)[0][0])  # one member besides the exemplar
    assert len(small.region(small_k).nearest) == 1 and small.region(small_k).farthest == []
    html = r._repr_html_()
    assert f"<mark style='background:#ffd54f;padding:0 2px'><b>T{doc}.{pos}</b></mark>" in html
    assert "&lt;&amp;&gt;" in html and "<&>" not in html  # escaped
    assert f"[[T{doc}.{pos}]]" in repr(r)
    d.save(tmp_path / "again.safetensors")  # byte-identical for identical contents
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "d.safetensors").read_bytes()


def test_region_without_text(small):
    r = small.region(0)
    assert r.exemplar.text is None and "no text stored" in r._repr_html_()
    assert small.region(0, lookup=lookup).exemplar.text == lookup(*small.exemplar_context[0, :2].tolist())
    with pytest.raises(IndexError):
        small.region(len(small))
    with pytest.raises(ValueError, match="left, token, right"):
        small.with_contexts(lambda doc, pos: "just a string")


def test_schema_1_file_still_loads(small, tmp_path):
    arrays = {name: getattr(small, name).contiguous() for name in epd._SPEC}  # exactly what schema 1 wrote
    save_arrays(tmp_path / "v1.safetensors", arrays, {**small._info(), "schema_version": 1}, epd._META_KEY)
    d = Dictionary.load(tmp_path / "v1.safetensors")
    assert not d.has_text and d.strings == [] and d.documents == []
    torch.testing.assert_close(d.exemplars, small.exemplars, rtol=0, atol=0)
    assert (d.nearest_text == -1).all() and d.region(0).exemplar.text is None


def test_schema_2_file_still_loads(small, tmp_path):
    """A schema-2 file kept the calibration flat in meta (and ep.build's model and layer twice): it loads nested."""
    cal = small.calibration
    config = BuildConfig(model="m", layer=3, percentile=5.0, context_length=32).to_dict()
    flat = {"model": "m", "layer": 3, "context_length": 32, "config": config,
            "threshold": small.threshold, "percentile": cal.percentile, "calibration_tokens": cal.n_tokens,
            "calibration_seed": 0, "calibration_batch_size": 200, "calibration_protocol": "rows",
            "calibration_docs_per_batch": None, "schema_version": 2, "tokens_streamed": 7}
    arrays = small.with_contexts(lookup)._arrays()
    save_arrays(tmp_path / "v2.safetensors", arrays, {**small._info(), "meta": flat, "schema_version": 2},
                epd._META_KEY)
    d = Dictionary.load(tmp_path / "v2.safetensors")
    assert d.meta == {"config": flat["config"], "tokens_streamed": 7, "calibration": {
        "percentile": cal.percentile, "n_tokens": cal.n_tokens, "seed": 0, "batch_size": 200, "protocol": "rows"}}
    assert d.calibration.n_tokens == cal.n_tokens and d.calibration.batch_size == 200
    assert d.config.model == "m" and d.config.layer == 3 and d.config.percentile == 5.0
    d.save(tmp_path / "v3.safetensors")  # saved again: schema 3, the same meta
    assert Dictionary.load(tmp_path / "v3.safetensors").meta == d.meta


def test_newer_and_bad_schema(small, tmp_path):
    arrays, info = small.with_contexts(lookup)._arrays(), small._info()
    for version, match in ((epd.SCHEMA_VERSION + 1, "newer ep.*upgrade"), (0, "schema version"),
                           ("2", "schema version"), (True, "schema version")):
        save_arrays(tmp_path / "x.safetensors", arrays, {**info, "schema_version": version}, epd._META_KEY)
        with pytest.raises(DictionaryFormatError, match=match):
            Dictionary.load(tmp_path / "x.safetensors")
    bad = {**arrays, "nearest_text": torch.full_like(arrays["nearest_text"], 10**6)}
    save_arrays(tmp_path / "x.safetensors", bad, info, epd._META_KEY)
    with pytest.raises(DictionaryFormatError, match="string table"):
        Dictionary.load(tmp_path / "x.safetensors")
    save_arrays(tmp_path / "x.safetensors", {k: v for k, v in arrays.items() if k != "strings_utf8"}, info,
                epd._META_KEY)
    with pytest.raises(DictionaryFormatError, match="missing"):
        Dictionary.load(tmp_path / "x.safetensors")
    docs = [f"doc {i}" for i in range(int(small.exemplar_context[:, 0].max()))]  # one document short
    with pytest.raises(DictionaryFormatError, match="names document"):
        Dictionary(**{n: getattr(small, n) for n in epd._SPEC}, threshold=small.threshold, documents=docs)


def test_neighbours_brute_force(small):
    ids, dist = small.neighbours(2, n=4)
    full = 1.0 - small.exemplars.double().numpy() @ small.exemplars[2].double().numpy()
    full[2] = np.inf
    np.testing.assert_array_equal(ids, np.argsort(full, kind="stable")[:4])
    np.testing.assert_allclose(dist, np.sort(full)[:4], atol=1e-6)


class CharTokenizer:
    """One token per character, BOS = id 0: enough to check the window arithmetic."""

    def __call__(self, doc, truncation, max_length, add_special_tokens):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in doc][:max_length - 1]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i)


def test_contexts_snippet_is_the_lookup(small):
    ctx = Contexts(CharTokenizer(), ["abcdefghijklmnopqrstuvwxyz"] * 40, context_length=64)
    assert ctx.snippet(0, 5, window=2) == ("…cd", "e", "fg…")
    assert ctx.snippet(0, 1, window=2) == ("", "a", "bc…")
    assert ctx.snippet(0, 26, window=2) == ("…xy", "z", "")
    assert "<mark" in ctx.html(0, 5) and "region 0" in ctx.region_html(small, 0)
    with pytest.raises(IndexError):
        ctx.snippet(0, 27)
    d = small.with_contexts(ctx.snippet)
    k = 0
    doc, pos, _ = small.exemplar_context[k].tolist()
    assert d.region(k).exemplar.text == ctx.snippet(doc, pos)
