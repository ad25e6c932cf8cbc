"""Tests for ep.method.dictionary: streaming builder vs slow references, assign, file format."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import ep.method.dictionary as epd
from ep.method.builder import DictionaryBuilder, _merge_top, build_dictionary
from ep.method.calibration import Calibration, calibrate, canonical_json, save_arrays, to_directions
from ep.method.dictionary import Dictionary, DictionaryFormatError
from ep.method.leader import dot64, leader_cluster
from ep.model.activations import ActivationBatch as Batch


def _acts(n=1500, d=16, seed=0):
    g = np.random.default_rng(seed)
    lab = g.integers(0, 12, n)
    a = 3.0 * g.normal(size=(12, d))[lab] + g.normal(size=(n, d)) + 5.0
    a[100:110] = a[50]  # exact duplicates: distance ties
    return a.astype(np.float32)


def _batches(a, size, offset=0):
    i = torch.arange(offset, offset + len(a))
    ctx = (i // 40, i % 40, (i * 7919) % 1000)  # doc, pos, token
    return [Batch(torch.from_numpy(a[s:s + size]), *(c[s:s + size] for c in ctx))
            for s in range(0, len(a), size)]


@pytest.fixture(scope="module")
def data():
    a = _acts()
    return a, calibrate(a, 3.0, batch_size=500, meta={"model": "toy", "layer": 0})


def _build(a, cal, size=256, **kw):
    return build_dictionary(_batches(a, size), cal, progress=False, **kw)


def _reference(u, theta, S):
    """Slow per-row reference of the definition: a row joins the most similar exemplar that exists
    when it arrives (dot64, ties to the lowest id) if it is within θ, else it becomes one."""
    ex, counts, sums, members = [], [], [], []
    for i in range(len(u)):
        sims = dot64(u[ex], u[i].expand(len(ex), -1)) if ex else torch.zeros(0, dtype=torch.float64)
        if not ex or sims.max() < 1.0 - theta:
            ex.append(i)
            counts.append(0)
            sums.append(np.zeros(u.shape[1]))
            members.append([])
            r = len(ex) - 1
        else:
            r = int(sims.argmax())  # first maximum: lowest id
            members[r].append((np.float32(1.0) - np.float32(sims[r]), i))
        counts[r] += 1
        sums[r] += u[i].numpy().astype(np.float64)
    near = [sorted(m)[:S] for m in members]
    far = [sorted(m, key=lambda t: (-t[0], t[1]))[:S] for m in members]
    return np.array(ex), np.array(counts), np.array(sums), near, far


def _samples_as_lists(ctx, dist):
    return [[(dist[k, j], int(ctx[k, j, 3])) for j in range(ctx.shape[1]) if ctx[k, j, 3] >= 0]
            for k in range(ctx.shape[0])]


def test_exemplars_equal_leader_cluster(data):
    a, cal = data
    d = _build(a, cal)
    u = to_directions(a, cal.centre)
    idx = leader_cluster(u, cal.threshold)
    assert 5 < len(d) < len(a)
    np.testing.assert_array_equal(d.exemplar_index.numpy(), np.asarray(idx))
    assert torch.equal(d.exemplars, u[torch.as_tensor(np.asarray(idx))])
    i = d.exemplar_index
    assert torch.equal(d.exemplar_context, torch.stack([i // 40, i % 40, (i * 7919) % 1000], 1))


def test_stats_and_samples_equal_slow_reference(data):
    a, cal = data
    a, S = a[:800], 5
    d = _build(a, cal, size=300, n_samples=S, chunk_size=128)
    u = to_directions(a, cal.centre)
    ex, counts, sums, near, far = _reference(u, cal.threshold, S)
    np.testing.assert_array_equal(d.exemplar_index.numpy(), ex)
    assert int(d.counts.sum()) == len(a) == d.meta["tokens_streamed"]
    np.testing.assert_array_equal(d.counts.numpy(), counts)
    norm = np.linalg.norm(sums, axis=1)
    np.testing.assert_allclose(d.mean_directions.numpy(), sums / norm[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.coherence.numpy(), norm / counts, rtol=1e-5)
    assert _samples_as_lists(d.nearest_contexts.numpy(), d.nearest_dist.numpy()) == near
    assert _samples_as_lists(d.farthest_contexts.numpy(), d.farthest_dist.numpy()) == far
    singletons = counts == 1  # only the exemplar: samples all padding
    assert singletons.any() and (d.nearest_contexts.numpy()[singletons] == -1).all()
    assert np.isnan(d.farthest_dist.numpy()[singletons]).all()
    assert (d.nearest_dist.numpy()[~np.isnan(d.nearest_dist.numpy())] <= cal.threshold + 1e-6).all()


def test_membership_is_nearest_exemplar_at_arrival():
    # A at 0°, X at 50°, Y at 30°, θ = 0.2: X is new (1 - cos 50° > θ); Y is within θ of A but
    # nearer to X, which arrived first. Y must join X however the rows are batched.
    ang = np.radians([0.0, 50.0, 30.0])
    a = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    cal = Calibration(centre=torch.zeros(2), threshold=0.2, percentile=1.0, n_tokens=3)
    for size in (1, 2, 3):
        d = _build(a, cal, size=3, chunk_size=size)
        assert d.counts.tolist() == [1, 2] and d.nearest_contexts[1, 0, 3] == 2


def test_merge_top_equals_bruteforce():
    g = torch.Generator().manual_seed(0)
    K, S = 30, 4
    for largest in (False, True):
        dist, ctx = torch.full((K, S), float("nan")), torch.full((K, S, 4), -1, dtype=torch.int64)
        seen, n = [], 0
        for size in (50, 1, 200, 7, 120):
            region = torch.randint(0, K, (size,), generator=g)
            dst = torch.randint(0, 6, (size,), generator=g).float() / 5  # many ties
            c = torch.randint(0, 100, (size, 4), generator=g)
            c[:, 3] = n + torch.arange(size)
            n += size
            _merge_top(dist, ctx, region, dst, c, largest)
            seen += [(int(r), float(x), tuple(cc.tolist())) for r, x, cc in zip(region, dst, c, strict=True)]
            for k in range(K):
                mine = sorted(((-x if largest else x), cc[3], cc) for r, x, cc in seen if r == k)[:S]
                got = [(float(dist[k, j]), tuple(ctx[k, j].tolist())) for j in range(S) if ctx[k, j, 3] >= 0]
                assert got == [((-x if largest else x), cc) for x, _, cc in mine]


@pytest.mark.parametrize("n,size,chunk", [(1500, 37, 4096), (800, 256, 50), (120, 1, 4096)])
def test_chunking_invariance(data, n, size, chunk):
    a, cal = data
    r = _build(a[:n], cal, size=n)
    d = _build(a[:n], cal, size=size, chunk_size=chunk)
    _assert_same(d, r)  # bit for bit

def test_state_is_bounded_by_regions(data):
    a, cal = data
    b = DictionaryBuilder(cal, n_samples=3)
    for batch in _batches(a, 200):
        b.add(batch)
    k, nbytes = b.num_regions, b.nbytes
    per_region = 2 * 8 + a.shape[1] * 8 + 4 * 8 + 2 * 3 * (4 + 4 * 8)  # counts, sums, ctx, samples
    assert nbytes <= (2 * k + 64) * per_region
    for _ in range(3):  # re-streaming the same tokens: no new regions, no new state
        for batch in _batches(a, 300, offset=len(a)):
            assert b.add(batch) == 0
    assert (b.num_regions, b.nbytes, b.tokens) == (k, nbytes, 4 * len(a))
    d = b.snapshot()
    assert int(d.counts.sum()) == 4 * len(a) and d.meta["tokens_streamed"] == 4 * len(a)


def test_snapshot_then_continue(data):
    a, cal = data
    b = DictionaryBuilder(cal)
    batches = _batches(a, 500)
    b.add(batches[0])
    snap = b.snapshot()
    for batch in batches[1:]:
        b.add(batch)
    full = b.snapshot()
    assert int(snap.counts.sum()) == 500 and int(full.counts.sum()) == len(a)
    assert torch.equal(full.exemplars[:len(snap)], snap.exemplars)


def test_build_dictionary_options(data):
    a, cal = data
    seen = []

    def batches():
        for batch in _batches(a, 100):
            seen.append(len(batch.acts))
            yield batch

    curve = []
    d = build_dictionary(batches(), cal, progress=False, max_tokens=250, meta={"corpus": "toy"},
                         on_batch=lambda t, k: curve.append((t, k)))
    assert int(d.counts.sum()) == 250 and len(seen) == 3  # stops pulling batches
    assert [t for t, _ in curve] == [100, 200, 250] and curve[-1][1] == len(d)
    assert d.meta["corpus"] == "toy" and d.config is None  # not made by ep.build: no BuildConfig
    again = d.calibration  # the calibration comes back typed, its provenance nested (not flattened into meta)
    assert again.threshold == cal.threshold and again.percentile == 3.0 and again.n_tokens == cal.n_tokens
    assert again.meta == {"model": "toy", "layer": 0} and "model" not in d.meta and "percentile" not in d.meta
    assert repr(d).startswith(f"Dictionary(regions={len(d)}")


def test_errors(data):
    a, cal = data
    for theta in (0.0, -0.1, float("nan")):
        bad = Calibration(centre=cal.centre, threshold=theta, percentile=1.0, n_tokens=1)
        with pytest.raises(ValueError, match="threshold"):
            DictionaryBuilder(bad)
    with pytest.raises(ValueError, match="no tokens"):
        build_dictionary([], cal, progress=False)
    b = DictionaryBuilder(cal)
    nan = a[:10].copy()
    nan[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        b.add(_batches(nan, 10)[0])
    with pytest.raises(ValueError, match="shape"):
        b.add(_batches(a[:10, :5], 10)[0])
    with pytest.raises(ValueError, match="entries"):
        b.add_arrays(a[:10], torch.zeros(9), torch.zeros(10), torch.zeros(10))
    assert b.tokens == 0 and b.num_regions == 0  # nothing half-added


def test_assign_equals_bruteforce(data):
    a, cal = data
    d = _build(a, cal)
    x = _acts(400, seed=1)
    ids, dist = d.assign(x, batch_size=64)
    assert ids.dtype == np.int64 and dist.dtype == np.float32 and ids.shape == (400,)
    u = x - cal.centre.numpy()
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    all_dist = 1.0 - u.astype(np.float64) @ d.exemplars.numpy().T.astype(np.float64)  # [N, K]
    np.testing.assert_array_equal(ids, all_dist.argmin(1))
    np.testing.assert_allclose(dist, all_dist.min(1), atol=1e-5)
    ids_t, _ = d.assign(torch.from_numpy(x))  # torch in, numpy out
    np.testing.assert_array_equal(ids_t, ids)
    ex_ids, ex_dist = d.assign(a[d.exemplar_index.numpy()])  # exemplars sit in their own cell
    np.testing.assert_array_equal(ex_ids, np.arange(len(d)))
    assert np.abs(ex_dist).max() < 1e-5
    torch.testing.assert_close(d.directions(x), to_directions(x, cal.centre))
    with pytest.raises(ValueError, match="shape"):
        d.assign(x[:, :-1])
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        d.assign(x)


# -- files ---------------------------------------------------------------------

def _assert_same(d1: Dictionary, d2: Dictionary):
    for name in epd._SPEC:
        t1, t2 = getattr(d1, name), getattr(d2, name)
        assert t1.dtype == t2.dtype and t1.shape == t2.shape, name
        torch.testing.assert_close(t1, t2, rtol=0, atol=0, equal_nan=True)
    assert d1.threshold == d2.threshold and d1.meta == d2.meta


@pytest.fixture(scope="module")
def small(data):
    a, cal = data
    return _build(a[:200, :], cal, n_samples=2)


def test_save_load_roundtrip_and_bytes(data, small, tmp_path):
    a, cal = data
    small.save(tmp_path / "d.safetensors")
    back = Dictionary.load(tmp_path / "d.safetensors")
    _assert_same(small, back)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file
    _build(a[:200], cal, n_samples=2).save(tmp_path / "again.safetensors")
    back.save(tmp_path / "resaved.safetensors")
    raw = (tmp_path / "d.safetensors").read_bytes()
    assert (tmp_path / "again.safetensors").read_bytes() == raw
    assert (tmp_path / "resaved.safetensors").read_bytes() == raw


def test_truncated_and_flipped_bytes(small, tmp_path):
    path = tmp_path / "d.safetensors"
    small.save(path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in (0, 4, 8, 100, len(raw) // 2, len(raw) - 1):
        bad.write_bytes(raw[:cut])
        with pytest.raises(DictionaryFormatError):
            Dictionary.load(bad)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for i in [*range(header_end), *range(header_end, len(raw), 41)]:  # every header byte, data sampled
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(DictionaryFormatError):
            Dictionary.load(bad)
    with pytest.raises(FileNotFoundError):
        Dictionary.load(tmp_path / "missing.safetensors")


def _write_raw(path: Path, arrays: dict, info: dict):
    save_arrays(path, arrays, info, epd._META_KEY)  # a well-formed, checksummed file


def test_schema_missing_and_inconsistent(small, tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    arrays = {k: v.contiguous() for k, v in small._arrays().items()}
    info = small._info()
    _write_raw(path, arrays, {**info, "schema_version": epd.SCHEMA_VERSION + 1})
    with pytest.raises(DictionaryFormatError, match="schema version"):
        Dictionary.load(path)
    _write_raw(path, {k: v for k, v in arrays.items() if k != "counts"}, info)
    with pytest.raises(DictionaryFormatError, match="missing"):
        Dictionary.load(path)
    _write_raw(path, {**arrays, "exemplars": arrays["exemplars"][:, :-1].contiguous()}, info)
    with pytest.raises(DictionaryFormatError, match="exemplars"):
        Dictionary.load(path)
    _write_raw(path, {**arrays, "counts": arrays["counts"].int()}, info)
    with pytest.raises(DictionaryFormatError, match="counts"):
        Dictionary.load(path)
    _write_raw(path, arrays, {**info, "threshold": -1.0})
    with pytest.raises(DictionaryFormatError, match="threshold"):
        Dictionary.load(path)
    path.write_bytes(st_save(arrays))  # no metadata at all
    with pytest.raises(DictionaryFormatError):
        Dictionary.load(path)
    assert json.loads(canonical_json(info))["schema_version"] == epd.SCHEMA_VERSION


def test_load_path_uses_no_pickle(small, tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    small.save(path)

    def boom(*args, **kwargs):
        raise AssertionError("pickle used on the load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(torch, "load", boom)
    _assert_same(Dictionary.load(path), small)
    for mod in (epd, __import__("ep.method.calibration").method.calibration):
        src = Path(mod.__file__).read_text()
        assert "import pickle" not in src and "torch.load(" not in src and "np.load(" not in src


def test_no_samples_and_empty_assign(data, tmp_path):
    a, cal = data
    d = _build(a[:300], cal, n_samples=0)
    assert d.nearest_contexts.shape == (len(d), 0, 4) and d.n_samples == 0
    d.save(tmp_path / "d.safetensors")
    _assert_same(Dictionary.load(tmp_path / "d.safetensors"), d)
    ids, dist = d.assign(np.zeros((0, a.shape[1]), np.float32))
    assert ids.shape == dist.shape == (0,)
