"""Leader clustering: exact equality with the one-row-at-a-time definition, for every batch size and both screens
(bf16 where the hardware has it, fp32 elsewhere: each test forces the screen, so both run on every machine)."""

import numpy as np
import pytest
import torch

from ep.method._engine import (
    GROUP,
    SAFETY,
    U_BF16,
    _argmax_exact,
    _at_least,
    _blockmax,
    _ieee_fp32,
    _leaders,
    _margin,
    _pair_dot64,
    _settled,
    _tol,
)
from ep.method.leader import LeaderClustering, dot64, leader_cluster, leader_cluster_reference


def clustered(n: int, d: int, k: int, seed: int = 0) -> torch.Tensor:
    """n unit rows around k centres with per-cluster noise scales from tight to loose. -> [n, d]"""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    sigma = torch.empty(k).uniform_(np.log(0.2), np.log(3.0), generator=g).exp()
    lab = torch.randint(0, k, (n,), generator=g)
    x = centres[lab] + sigma[lab, None] * torch.randn(n, d, generator=g) / d**0.5
    return torch.nn.functional.normalize(x, dim=1)


def near_threshold(theta: float, d: int = 256, bases: int = 24, per_base: int = 10, seed: int = 1) -> torch.Tensor:
    """Rows whose cosine to an earlier row is tau +- delta, delta in [1e-7, 1e-3]: bf16 cannot decide them."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    b = q[:, :bases].T  # [bases, d] orthonormal
    rest = q[:, bases:]  # [d, d - bases] orthogonal to every base
    tau = 1.0 - theta
    rows = []
    for k in range(bases):
        delta = 10 ** torch.empty(per_base, dtype=torch.float64).uniform_(-7, -3, generator=g)
        c = tau + delta * torch.where(torch.rand(per_base, generator=g) < 0.5, -1.0, 1.0)  # [per_base] cosines
        z = torch.nn.functional.normalize(torch.randn(per_base, d - bases, dtype=torch.float64, generator=g) @ rest.T)
        rows.append(c[:, None] * b[k] + (1 - c[:, None] ** 2).sqrt() * z)
    followers = torch.cat(rows)[torch.randperm(bases * per_base, generator=g)]
    return torch.cat([b, followers]).float()


SCREENS = [torch.bfloat16, torch.float32]
REGIMES = [0.9, 0.6, 0.3, 0.1, 0.01]  # from "few regions" to "every row an exemplar"
X = clustered(500, 48, 12)
REF = {theta: leader_cluster_reference(X, theta) for theta in REGIMES}


def test_regimes_cover_few_to_all():
    counts = [len(REF[t]) for t in REGIMES]
    assert counts[0] < 50 and counts[-1] == X.shape[0] and counts == sorted(counts)


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("theta", REGIMES)
@pytest.mark.parametrize("batch_size", [1, 7, 64, 4096, 500])
def test_matches_reference(theta, batch_size, screen):
    np.testing.assert_array_equal(leader_cluster(X, theta, batch_size=batch_size, screen=screen), REF[theta])


@pytest.mark.parametrize("theta", [0.6, 0.1])
def test_numpy_input_and_int64(theta):
    got = leader_cluster(X.numpy(), theta, batch_size=64)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, REF[theta])


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("theta", [0.15, 0.4])
def test_matches_reference_d640(theta, screen):
    x = clustered(1200, 640, 30, seed=3)
    ref = leader_cluster_reference(x, theta)
    assert 30 < len(ref) < 1200
    for bs in (100, 4096):
        np.testing.assert_array_equal(leader_cluster(x, theta, batch_size=bs, screen=screen), ref)


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("theta", [0.3, 0.75])
@pytest.mark.parametrize("batch_size", [1, 16, 4096])
def test_near_threshold_needs_exact_check(theta, batch_size, screen):
    x = near_threshold(theta)
    tau = 1.0 - theta
    gaps = (x[24:].double() @ x[:24].double().T - tau).abs().min(dim=1).values
    assert gaps.max() < 1.1e-3  # every follower is within reach of the bf16 error
    m32 = float(_margin(torch.zeros(1), 0.0, 1.0 + 1e-6, x.shape[1], tau, 0.0))  # the fp32 screen's margin
    assert (gaps < m32).sum() > 20  # and many within reach of the fp32 screen's
    ref = leader_cluster_reference(x, theta)
    assert 24 + 50 < len(ref) < x.shape[0] - 50  # many land on each side of the threshold
    np.testing.assert_array_equal(leader_cluster(x, theta, batch_size=batch_size, screen=screen), ref)


def arrival_reference(x: torch.Tensor, theta: float, batch_size: int):  # batch_size: no effect, by design
    """add()'s documented rule, a row at a time: the most similar of all exemplars so far (dot64)."""
    n, tau, ex, out = x.shape[0], 1.0 - theta, [], []
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    g = _pair_dot64(x, i.reshape(-1), x, j.reshape(-1)).reshape(n, n)  # [n, n] every dot64
    for i in range(n):  # exact arrival: the most similar of all exemplars so far, whatever batch_size
        sims = g[i, ex] if ex else g[i, :0]
        if len(ex) and sims.max() >= tau:
            j = int(sims.argmax())
            out.append((False, j, float(sims[j].float())))
        else:
            out.append((True, len(ex), 1.0))
            ex.append(i)
    return out


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("data", ["clustered", "near_threshold"])
@pytest.mark.parametrize("batch_size", [1, 5, 64, 1000])
def test_add_nearest_and_similarity(data, batch_size, screen):
    theta = 0.3
    x = X[:400] if data == "clustered" else near_threshold(theta)
    lc = LeaderClustering(x.shape[1], theta, device="cpu", screen=screen)
    got = []
    for s in range(0, x.shape[0], batch_size):
        k = lc.num_exemplars
        is_new, near, sim = lc.add(x[s : s + batch_size])
        assert is_new.dtype == torch.bool and near.dtype == torch.int64 and sim.dtype == torch.float32
        assert lc.num_exemplars == k + int(is_new.sum())
        got += list(zip(is_new.tolist(), near.tolist(), sim.tolist()))
    assert got == arrival_reference(x, theta, batch_size)
    ex = [i for i, (new, _, _) in enumerate(got) if new]
    torch.testing.assert_close(lc.exemplars, x[ex], rtol=0, atol=0)
    np.testing.assert_array_equal(ex, leader_cluster_reference(x, theta))


@pytest.mark.parametrize("screen", SCREENS)
def test_streaming_batches_of_any_size_agree(screen):
    lc = LeaderClustering(X.shape[1], 0.3, device="cpu", screen=screen)
    sizes, s, new = [1, 300, 2, 0, 397], 0, []
    for b in sizes:
        new += (lc.add(X[s : s + b])[0].nonzero()[:, 0] + s).tolist()
        s += b
    assert new == REF[0.3].tolist()


@pytest.mark.parametrize("before, after", [(a, b) for a in SCREENS for b in SCREENS])
def test_restore_continues_exactly_in_either_screen(before, after):
    """A checkpoint's state() restored into a fresh clusterer, of the same or the other screen, decides the rest
    of the stream exactly as one uninterrupted run (the reference); near-ties included."""
    theta = 0.3
    x = near_threshold(theta)
    want = arrival_reference(x, theta, 0)
    lc = LeaderClustering(x.shape[1], theta, device="cpu", screen=before)
    got = list(zip(*(t.tolist() for t in lc.add(x[:100]))))
    exemplars, eps, norm = lc.state()
    again = LeaderClustering(x.shape[1], theta, device="cpu", screen=after)
    again.restore(exemplars, eps, norm)
    assert again.num_exemplars == lc.num_exemplars and again._eps >= eps and again._norm >= norm
    if after == torch.bfloat16:
        assert again._eps > 0  # its own rounding counts even when the checkpoint came from the fp32 screen
    got += list(zip(*(t.tolist() for t in again.add(x[100:]))))
    assert got == want


def test_fp32_screen_gemm_runs_in_ieee_fp32(monkeypatch):
    """Whatever the caller set (TF32 on CUDA, bf16 inside oneDNN fp32 GEMMs), the screen's GEMMs run in true
    fp32, and the caller's setting is back afterwards."""
    cuda, mkldnn = torch.backends.cuda.matmul, torch.backends.mkldnn
    new_api = hasattr(cuda, "fp32_precision")
    seen, mm = [], torch.mm

    def spy(*args, **kwargs):
        if new_api:
            seen.append((cuda.fp32_precision, mkldnn.matmul.fp32_precision,
                         cuda.allow_bf16_reduced_precision_reduction))
        else:
            seen.append((cuda.allow_tf32, torch.get_float32_matmul_precision(),
                         cuda.allow_bf16_reduced_precision_reduction))
        return mm(*args, **kwargs)

    if new_api:
        old = cuda.fp32_precision, mkldnn.matmul.fp32_precision
        cuda.fp32_precision, mkldnn.matmul.fp32_precision = "tf32", "bf16"
    else:
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
    monkeypatch.setattr(torch, "mm", spy)
    try:
        got = leader_cluster(X, 0.3, batch_size=64, screen=torch.float32)
        after = (cuda.fp32_precision, mkldnn.matmul.fp32_precision) if new_api else torch.get_float32_matmul_precision()
    finally:
        if new_api:
            cuda.fp32_precision, mkldnn.matmul.fp32_precision = old
        else:
            torch.set_float32_matmul_precision(old)
    np.testing.assert_array_equal(got, REF[0.3])
    assert seen and set(seen) == ({("ieee", "ieee", False)} if new_api else {(False, "highest", False)})
    assert after == (("tf32", "bf16") if new_api else "medium")


def test_rounds_equal_sequential_rule():
    g = torch.Generator().manual_seed(0)
    for n, p in [(1, 0.0), (50, 0.0), (200, 0.02), (300, 0.2), (60, 1.0)]:
        adj = torch.rand(n, n, generator=g) < p
        chain = torch.arange(1, n)
        adj[chain, chain - 1] = True  # a long chain: worst case for the number of rounds
        src, dst = torch.tril(adj, -1).nonzero(as_tuple=True)
        lead = []
        for i in range(n):
            lead.append(not any(lead[j] for j in dst[src == i].tolist()))
        assert _leaders(n, src, dst).tolist() == lead


def test_dot64_does_not_depend_on_batching():
    a, b = torch.randn(300, 640), torch.randn(300, 640)
    full = dot64(a, b)
    assert all(bool(dot64(a[i : i + 1], b[i : i + 1]) == full[i]) for i in range(0, 300, 37))
    torch.testing.assert_close(full, (a.double() * b.double()).sum(1), rtol=0, atol=1e-12)


def bf16_scores(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mm(x.bfloat16(), y.bfloat16().T)  # [n, m] bf16, as in LeaderClustering


@pytest.mark.parametrize("d", [64, 640, 2304])
def test_bf16_margin_bound(d):
    g = torch.Generator().manual_seed(d)
    x = torch.nn.functional.normalize(torch.randn(256, d, generator=g), dim=1)
    y = torch.cat([x[:64], torch.nn.functional.normalize(torch.randn(1024, d, generator=g), dim=1)])
    y[64:128] = torch.nn.functional.normalize(x[:64] + 0.5 * torch.randn(64, d, generator=g) / d**0.5, dim=1)
    s = x.double() @ y.double().T  # [256, 1088] exact to ~1e-15, includes cos ~ 1 and ~ 0.9
    err = (bf16_scores(x, y).double() - s).abs()
    eps_x = (x - x.bfloat16().float()).double().norm(dim=1)
    eps_y = (y - y.bfloat16().float()).double().norm(dim=1)
    norm = max(x.double().norm(dim=1).max(), x.bfloat16().double().norm(dim=1).max(), 1.0)
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    e = (eps_x[:, None] + eps_y[None, :]) * norm + gamma * norm**2  # the proven bound, no safety factor
    assert (err <= e + U_BF16 * (s.abs() + e)).all()
    m = _margin(eps_x, eps_y.max().item(), norm, d, 1.0, U_BF16)  # what the filter uses at level 1
    assert (err.amax(dim=1) < m).all()
    print(f"d={d}: max error {err.max():.2e}, margin at cos 1 {m.max():.2e}, at cos 0.5 "
          f"{_margin(eps_x, eps_y.max().item(), norm, d, 0.5, U_BF16).max():.2e}")


@pytest.mark.parametrize("d", [64, 640, 2304])
def test_fp32_margin_bound(d):
    """The fp32 screen: no input rounding, no output rounding; the GEMM's own error is within gamma_d R^2."""
    g = torch.Generator().manual_seed(d)
    x = torch.nn.functional.normalize(torch.randn(256, d, generator=g), dim=1) * 1.5  # not unit
    y = torch.cat([x[:64], torch.nn.functional.normalize(torch.randn(1024, d, generator=g), dim=1)])
    with _ieee_fp32():
        got = torch.mm(x, y.T)
    err = (got.double() - x.double() @ y.double().T).abs()
    norm = float(x.double().norm(dim=1).max()) * (1 + 1e-6)
    m = _margin(torch.zeros(256, dtype=torch.float64), 0.0, norm, d, norm * norm, 0.0)
    assert (err.amax(dim=1) <= m / SAFETY).all()
    assert err.max() > m.max() / 1e4  # the bound is not vacuous: the GEMM really rounds
    assert m.max() < U_BF16 / 10  # and far tighter than the bf16 screen's


def test_bf16_gemm_rounds_to_nearest():
    """The bound assumes an fp32 accumulator rounded to nearest bf16 (truncation would double term 3)."""
    x = torch.nn.functional.normalize(torch.randn(128, 640, generator=torch.Generator().manual_seed(1)), dim=1)
    xb = x.bfloat16()
    exact = (xb.double() @ xb.double().T).float().bfloat16()  # round to nearest of the exact sum
    assert (bf16_scores(x, x) != exact).double().mean() < 0.05


def test_bf16_margin_bound_worst_case_rounding():
    """Entries just below the bf16 rounding midpoint: every input error has the same sign (x.x)."""
    d = 64
    sign = torch.where(torch.rand(d, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    x = (sign * (1 + 0.99 * 2.0**-8) / 8)[None, :]  # norm 1.004, each entry rounds down by ~u
    eps = (x - x.bfloat16().float()).double().norm(dim=1)
    norm = float(x.double().norm())
    err = float((bf16_scores(x, x).double() - x.double() @ x.double().T).abs())
    assert err > 1.9 * U_BF16  # the input rounding really is ~2u here
    assert err < float(_margin(eps, eps.item(), norm, d, norm * norm, U_BF16)) / SAFETY * 1.0001


def test_scaled_rows_still_exact():
    x = X[:300] * torch.linspace(0.5, 1.5, 300)[:, None]  # not unit: the bound uses the real norms
    np.testing.assert_array_equal(leader_cluster(x, 0.3, batch_size=64), leader_cluster_reference(x, 0.3))


@pytest.mark.parametrize(
    "bad, threshold, batch_size, match",
    [
        (np.zeros((0, 4), np.float32), 0.5, 16, "empty"),
        (np.zeros((4, 0), np.float32), 0.5, 16, "empty"),
        (np.ones(4, np.float32), 0.5, 16, "2-D"),
        (np.ones((2, 2, 2), np.float32), 0.5, 16, "2-D"),
        (np.array([[1.0, np.nan]], np.float32), 0.5, 16, "NaN"),
        (np.array([[1.0, np.inf]], np.float32), 0.5, 16, "NaN or inf"),
        (np.eye(3, dtype=np.float32), 0.0, 16, "threshold"),
        (np.eye(3, dtype=np.float32), -0.1, 16, "threshold"),
        (np.eye(3, dtype=np.float32), 2.0, 16, "threshold"),
        (np.eye(3, dtype=np.float32), float("nan"), 16, "threshold"),
        (np.eye(3, dtype=np.float32), 0.5, 0, "batch_size"),
    ],
)
def test_clear_errors(bad, threshold, batch_size, match):
    with pytest.raises(ValueError, match=match):
        leader_cluster(bad, threshold, batch_size=batch_size)


def test_streaming_errors():
    with pytest.raises(ValueError, match="threshold"):
        LeaderClustering(8, 0.0)
    lc = LeaderClustering(8, 0.5, device="cpu")
    with pytest.raises(ValueError, match=r"shape \[N, 8\]"):
        lc.add(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="NaN"):
        lc.add(torch.full((2, 8), float("nan")))
    is_new, near, sim = lc.add(torch.zeros(0, 8))
    assert is_new.shape == near.shape == sim.shape == (0,) and lc.num_exemplars == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    x = clustered(3000, 256, 40, seed=5)
    for theta in (0.3, 0.6):
        np.testing.assert_array_equal(leader_cluster(x.cuda(), theta), leader_cluster_reference(x, theta))


@pytest.mark.parametrize("dtype", SCREENS)
@pytest.mark.parametrize("sparse", [True, False])
def test_block_scan_equals_full_scan(sparse, dtype):
    """_blockmax / _at_least against a plain comparison of every score: positive, negative and skipped bounds."""
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(200, 8 * GROUP, generator=g) * 0.3).to(dtype)  # [200, 128], both signs
    s[5] = -torch.rand(8 * GROUP, generator=g).to(dtype) - 0.1  # an all-negative row
    _, top = _blockmax(s)
    assert torch.equal(top, s.double().amax(dim=1))
    bound = (top - (0.05 if sparse else 2.0)).clamp_min(0.01)  # sparse: near the max; dense: almost all positives
    bound[:10] = torch.linspace(-0.5, -0.01, 10, dtype=torch.float64)  # non-positive bounds: the float path
    bound[10:15] = torch.inf  # skipped rows
    bound[20:25] = top[20:25]  # a bound equal to a score: that score counts
    bound[25:30] = top[25:30] + 1e-12  # just above: it does not
    r, c, v = _at_least(s, _blockmax(s)[0], bound)
    want = (s.double() >= bound[:, None]).nonzero()
    got = torch.stack([r, c], 1)
    assert torch.equal(got[torch.argsort(r * 10**6 + c)], want)
    assert torch.equal(v, s[r, c].double())


def test_settled_rounds_and_decides_like_dot64():
    g = torch.Generator().manual_seed(4)
    x = torch.nn.functional.normalize(torch.randn(300, 640, generator=g), dim=1)
    i, j = torch.randint(0, 300, (2, 3000), generator=g)
    exact = _pair_dot64(x, i, x, j)
    tau = float(exact[7])  # a pair exactly at the threshold: only dot64 can say it is >= tau
    f, was_exact = _settled(x, i, x, j, tau, _tol(640, 1.0 + 1e-6))
    assert torch.equal(f.float(), exact.float())  # the same fp32 similarity
    assert torch.equal(f >= tau, exact >= tau) and bool(was_exact[7])
    assert (f - exact).abs().max() <= _tol(640, 1.0 + 1e-6)


def test_argmax_exact_breaks_near_ties_on_dot64():
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    row = torch.tensor([0, 0, 0, 1, 1])
    col = torch.tensor([3, 1, 2, 4, 5])
    xs = torch.stack([x[0], x[0], x[0], x[1], x[1]])  # a[row]
    ys = torch.stack([x[10], x[10], x[11], x[12], x[13]])  # cols 3 and 1 of row 0: the same vector, an exact tie
    exact = dot64(xs, ys)
    f = exact + torch.tensor([1e-15, -1e-15, 0.0, 0.0, 0.0], dtype=torch.float64)  # settled values may be off
    best, arg = _argmax_exact(row, col, f, torch.zeros(5, dtype=torch.bool), 2, 1e-13,
                              lambda m: dot64(xs[m], ys[m]))
    order0 = [(float(exact[k]), -int(col[k])) for k in range(3)]
    assert arg[0] == -max(order0)[1] and best[0] == max(order0)[0]  # the tie goes to the lowest col, 1
    assert arg[1] == col[3 + int(exact[4] > exact[3])]
