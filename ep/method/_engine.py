"""The fast engine of leader clustering (private): ``LeaderClustering`` and the numerics behind it.

What it computes, and why it is exact, is told in ``ep.method.leader`` (the public module, with the
one-row-at-a-time reference it must equal). Here: ``dot64``, the exact float64 dot products both decide on;
the screen's error bound (`_margin`), the float64 recheck of the undecided pairs (`_settled`,
`_argmax_exact`), the candidate scan over column blocks (`_blockmax`, `_at_least`), the within-batch leaders
in rounds of tensor ops (`_leaders`), and the streaming state (`LeaderClustering`). How many threads a batch
runs on is ``ep.method.device``'s decision (``torch_threads``).
"""

import contextlib

import torch

from .device import default_device, screen_dtype
from .rows import check_shape

U_BF16 = 2.0**-8  # unit roundoff of bf16 (8 significant bits)
SCREENS = (torch.bfloat16, torch.float32)
BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}  # ints whose bit views sort like floats >= 0
SAFETY = 1.25  # factor on the proven input + accumulation error
CHUNK = 1 << 22  # scores per GEMM block (8 or 16 MB: fresh pages cost a fault each)
ROW_BLOCK = 512  # rows per block of the within-batch GEMM
GROUP = 16  # columns per block of the candidate scan (`_blockmax`)
SUB_BATCH = 512  # smallest sub-batch of add() while the exemplars are fewer
MAX_ROWS_X_DIM = 1 << 22  # largest sub-batch in entries (16 MB of fp32): glibc reuses blocks up to 32 MB


def dot64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products in float64, bit-identical for any batch or device. a, b: [P, d] -> [P]."""
    p = a.double().mul_(b)  # [P, d], exact: 24 + 24 significant bits fit in 53
    if p.shape[1] % 64:
        p = torch.nn.functional.pad(p, (0, 64 - p.shape[1] % 64))  # zeros change no sum
    while p.shape[1] % 2 == 0:  # fixed order: halves added pairwise, then the odd rest left to right
        p = p[:, : p.shape[1] // 2] + p[:, p.shape[1] // 2 :]
    out = p[:, 0]
    for j in range(1, p.shape[1]):
        out = out + p[:, j]
    return out


def _pair_dot64(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """dot64(a[ia], b[ib]) in slices that bound memory. a [n, d], b [m, d], ia, ib [P] -> [P]."""
    step = max(1, (1 << 21) // a.shape[1])
    out = [dot64(a[ia[s : s + step]], b[ib[s : s + step]]) for s in range(0, ia.shape[0], step)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=a.device)


def _fast_dots(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """a[ia] . b[ib] in float64, summed in whatever order the library likes. -> [P]

    The products of fp32 entries are exact in float64, so any order of summation (dot64's included) is
    within gamma_d R^2 of the exact value: the result is within `_tol` of dot64. Slices of 512 KB, in
    buffers reused from slice to slice, stay in cache and cost no allocation each."""
    P, d = ia.shape[0], a.shape[1]
    out = torch.empty(P, dtype=torch.float64, device=a.device)
    step = max(1, min(P, (1 << 16) // d))
    ga, gb = a.new_empty(step, d), b.new_empty(step, d)  # gathered fp32 rows
    p = torch.empty(step, d, dtype=torch.float64, device=a.device)  # their products
    for s in range(0, P, step):
        m = min(step, P - s)
        torch.index_select(a, 0, ia[s : s + m], out=ga[:m])
        torch.index_select(b, 0, ib[s : s + m], out=gb[:m])
        torch.sum(p[:m].copy_(ga[:m]).mul_(gb[:m]), dim=1, out=out[s : s + m])
    return out


def _tol(d: int, norm: float) -> float:
    """A bound on |float64 sum in any order - dot64| for rows of norm <= `norm` (twice gamma_d R^2, doubled)."""
    return 4.0 * d * 2.0**-53 / (1 - d * 2.0**-53) * norm * norm


def _settled(a, ia, b, ib, tau: float, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 dots that decide like dot64: the same side of tau, the same fp32 rounding. -> f [P], exact [P]

    f is within tol of dot64; where that leaves either question open, f is dot64 itself (exact = True)."""
    f = _fast_dots(a, ia, b, ib)
    exact = ((f - tau).abs() <= tol) | ((f - tol).float() != (f + tol).float())
    if bool(exact.any()):
        f[exact] = _pair_dot64(a, ia[exact], b, ib[exact])
    return f, exact


def _argmax_exact(row, col, f, exact, n: int, tol: float, redo) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the max of f and its col, lowest col on ties, as dot64 decides. -> [n] float64, [n] int64

    Pairs (row, col) with settled values f [P] (exact [P]: f is dot64 itself). Where a row's runner-up is
    within 2 tol of its max the order is unsure: those pairs are recomputed with redo(mask) -> dot64."""
    best = torch.full((n,), -torch.inf, dtype=f.dtype, device=f.device).scatter_reduce(0, row, f, "amax")
    close = f >= best[row] - 2 * tol
    if bool((close & ~exact).any()):
        fix = close & (torch.bincount(row[close], minlength=n)[row] > 1) & ~exact
        if bool(fix.any()):
            f = f.clone()
            f[fix] = redo(fix)
            best = torch.full((n,), -torch.inf, dtype=f.dtype, device=f.device).scatter_reduce(0, row, f, "amax")
    top = f == best[row]
    return best, torch.full((n,), n << 40, device=f.device).scatter_reduce(0, row[top], col[top], "amin")


def _screen_rows(x: torch.Tensor, screen: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, d] fp32 in the screen dtype -> xs [B, d], eps [B] >= ||x - xs||, rnorm [B] >= ||x||, ||xs||, float64.

    fp32: xs is x itself, eps 0. bf16: the difference is exact in fp32; a slice of rows at a time, so it lives
    in cache, not in a fresh [B, d] block (at d = 2304 the whole-batch version spent more time faulting that
    block's pages in than computing). The fp32 norms are rounded: `grow` covers that."""
    B, d = x.shape
    eps, norm = torch.zeros(B, device=x.device), x.new_empty(B)
    xs = x if screen == torch.float32 else torch.empty(B, d, dtype=screen, device=x.device)
    step = max(1, (1 << 16) // d)
    for s in range(0, B, step):
        rows = x[s : s + step]
        if xs is not x:
            torch.linalg.vector_norm(xs[s : s + step].copy_(rows).float().sub_(rows), dim=1, out=eps[s : s + step])
        torch.linalg.vector_norm(rows, dim=1, out=norm[s : s + step])
    grow = 1 + d * 2.0**-22
    eps = eps.double() * grow
    return xs, eps, norm.double() * grow + eps  # triangle inequality: ||xs|| <= ||x|| + eps


def _margin(eps: torch.Tensor, eps_other: float, norm: float, d: int, level: float, u: float) -> torch.Tensor:
    """Bound on |screen score - x.y| for scores near `level`; eps [B] = ||x - x'|| per row, x' = x in the
    screen dtype; u the unit roundoff of the score (U_BF16 for bf16 scores, 0 for fp32: no step 3).

    (1) inputs: x.y - x'.y' = (x - x').y + x'.(y - y'), so by Cauchy-Schwarz the error is at most
        eps_x R + R eps_y, R >= every ||x||, ||x'||. bf16: measured per row eps ~ 0.45 u ||x|| (worst case
        u ||x||); fp32: x' = x, eps = 0.
    (2) an fp32 dot product of d terms, with products rounded to fp32 or not (bf16 x bf16 products are
        exact in fp32; fp32 x fp32 ones are not, or fused into an FMA) and summed in any order, has each
        term rounded at most d times, so it is off by at most gamma_d sum |x'_i y'_i| <= gamma_d R^2,
        gamma_d = d 2^-24 / (1 - d 2^-24). This needs a true fp32 accumulator: `_ieee_fp32`. Call (1) + (2) e.
    (3) bf16 scores: rounding the fp32 result to bf16 is monotone with relative error <= u = 2^-8: if x.y
        < tau then the fp32 result is < tau + e and the score <= (tau + e)(1 + u); likewise from below.
    So m = SAFETY e + u (|level| + SAFETY e); unit rows at d = 640: bf16 m ~ (1.2 + |tau|) u, not 3u;
    fp32 m ~ 1.25 gamma_d (5e-5 at d = 640).
    """
    e = SAFETY * ((eps + eps_other) * norm + d * 2.0**-24 / (1 - d * 2.0**-24) * norm**2)
    return e + u * (abs(level) + e)


@contextlib.contextmanager
def _ieee_fp32():
    """fp32 matrix products in true fp32 for the block, as `_margin` (2) needs: torch's "high" / "medium"
    float32 matmul precision lets CUDA use TF32 and oneDNN bf16 inside an fp32 GEMM, and CUDA may reduce
    bf16 split-K partial sums in bf16. All of it is switched off here and restored after."""
    cuda, mkldnn = torch.backends.cuda.matmul, getattr(torch.backends, "mkldnn", None)
    reduced = cuda.allow_bf16_reduced_precision_reduction
    cuda.allow_bf16_reduced_precision_reduction = False
    if hasattr(cuda, "fp32_precision"):  # torch >= 2.9: per backend; the legacy getters refuse once it is used
        old = cuda.fp32_precision, mkldnn.matmul.fp32_precision
        cuda.fp32_precision = mkldnn.matmul.fp32_precision = "ieee"
    else:  # older torch: one global setting (allow_tf32 follows it)
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        cuda.allow_bf16_reduced_precision_reduction = reduced
        if hasattr(cuda, "fp32_precision"):
            cuda.fp32_precision, mkldnn.matmul.fp32_precision = old
        else:
            torch.set_float32_matmul_precision(old)


def _bucket(n: int) -> int:
    """n rounded up to one of 8 sizes per octave, a multiple of GROUP: at most max(GROUP, n / 8) more.

    >>> [_bucket(n) for n in (1, 16, 100, 1000, 4096, 4097)]
    [16, 16, 112, 1024, 4096, 4608]
    """
    step = max(GROUP, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


def _blockmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maxima of bf16 or fp32 scores s [n, w] (w % GROUP == 0) per block of GROUP columns and per row.

    -> bm [n, w / GROUP] int16 / int32 (block j: columns j, j + w/GROUP, ...), top [n] float64 row maxima.
    Bit patterns of floats >= +0 sort like same-width ints, and int16 reductions are ~10x faster on CPU
    than bf16 ones; a block (row) whose int max is negative is all negative (its bm is then meaningless;
    its row max is the int min: the negative float nearest 0; recomputed for those rows)."""
    bits = s.view(BITS[s.dtype])
    bm = bits.view(s.shape[0], GROUP, s.shape[1] // GROUP).amax(dim=1)
    top = bm.amax(dim=1)
    neg = top < 0
    if bool(neg.any()):
        top[neg] = bits[neg].amin(dim=1)
    return bm, top.view(s.dtype).double()


def _at_least(s: torch.Tensor, bm: torch.Tensor, bound: torch.Tensor):
    """The entries of s [n, w] with s >= bound [n] (float64; +inf skips a row). -> rows, cols [h], values [h] f64

    Scans only the blocks whose max reaches the bound (a number of s.dtype just below it, compared as ints,
    valid for a positive bound); rows with a bound <= 0 are compared in full, as floats."""
    n, w = s.shape
    below = (bound - bound.abs() * torch.finfo(s.dtype).eps - 1e-30).to(s.dtype)  # a number <= bound in s.dtype
    pos = below > 0
    r_all, c_all = [], []
    neg = (~pos & bound.isfinite()).nonzero()[:, 0]
    if neg.numel():
        r, c = (s[neg].float() >= below[neg, None].float()).nonzero(as_tuple=True)
        r_all.append(neg[r]), c_all.append(c)
    cut = torch.where(pos, below, torch.full_like(below, torch.inf)).view(BITS[s.dtype])  # +inf: nothing passes
    r, j = (bm >= cut[:, None]).nonzero(as_tuple=True)  # blocks that may hold entries >= bound
    wg = w // GROUP
    if r.numel() * 4 > bm.numel():  # dense: one pass over everything is cheaper than gathering blocks
        r, c = (s.view(cut.dtype) >= cut[:, None]).nonzero(as_tuple=True)
    else:
        cols = j[:, None] + torch.arange(0, w, wg, device=s.device)  # [h, GROUP]
        p, t = (s.view(cut.dtype)[r[:, None], cols] >= cut[r, None]).nonzero(as_tuple=True)
        r, c = r[p], cols[p, t]
    r_all.append(r), c_all.append(c)
    r, c = torch.cat(r_all), torch.cat(c_all)
    v = s[r, c].double()
    keep = v >= bound[r]
    return r[keep], c[keep], v[keep]


def _leaders(n: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The sequential rule "row i leads iff no earlier leader is within threshold", in rounds. -> [n] bool

    src > dst are the within-threshold pairs. A row is a leader once all its earlier neighbours are
    decided followers, a follower once one of them is a leader. By induction over i this equals the
    sequential rule; each round decides at least the earliest undecided row, typically many more."""
    state = torch.zeros(n, dtype=torch.int8, device=src.device)  # 0 undecided, 1 leader, 2 follower
    while True:
        und = state == 0
        if not und.any():
            return state == 1
        live = und[src]
        src, dst = src[live], dst[live]
        st = state[dst]
        follow = torch.zeros_like(und).index_fill_(0, src[st == 1], True)
        wait = torch.zeros_like(und).index_fill_(0, src[st == 0], True)
        state[und & follow] = 2
        state[und & ~follow & ~wait] = 1


def _check_threshold(threshold: float) -> None:
    if not 0.0 < float(threshold) < 2.0:
        raise ValueError(f"threshold is a cosine distance and must be in (0, 2), got {threshold}")


def _as_rows(directions, dim: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(directions)
    check_shape(x, None, "directions")
    if x.shape[1] == 0 or (dim is None and x.shape[0] == 0):
        raise ValueError(f"directions is empty: shape {tuple(x.shape)}")
    check_shape(x, dim, "directions")
    x = x.to(torch.float32).contiguous()
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # a finite sum proves all finite
        raise ValueError("directions contain NaN or inf")
    return x


class LeaderClustering:
    """Streaming leader clustering; the state is the exemplars only (fp32, + a bf16 copy for a bf16 screen: O(K d)).

    screen: the dtype of the filter's GEMM, bfloat16 or float32; None: `screen_dtype(device)`, the hardware's."""

    def __init__(self, dim: int, threshold: float, device: str | torch.device | None = None,
                 screen: torch.dtype | None = None):
        _check_threshold(threshold)
        self.dim, self.threshold, self.tau = int(dim), float(threshold), 1.0 - float(threshold)
        self.device = torch.device(device) if device is not None else default_device()
        self.screen = screen or screen_dtype(self.device)
        if self.screen not in SCREENS:
            raise ValueError(f"screen must be torch.bfloat16 or torch.float32, got {self.screen}")
        self._u = U_BF16 if self.screen == torch.bfloat16 else 0.0  # roundoff of a score (`_margin` step 3)
        self._e32 = torch.empty(0, self.dim, device=self.device)  # [cap, d], rows [:k] in use
        self._es = self._e32.to(self.screen)  # [cap, d] in the screen dtype (fp32: the same tensor)
        self._k, self._eps, self._norm = 0, 0.0, 0.0  # count, max ||e - e_screen||, max(||e||, ||e_screen||)
        self._unmatched = 1.0  # fraction of the last sub-batch's rows that matched no earlier exemplar
        self._buf = torch.empty(0, dtype=self.screen, device=self.device)  # GEMM output scratch
        upper = torch.ones(ROW_BLOCK, ROW_BLOCK, dtype=torch.bool, device=self.device).triu()
        self._tri = torch.zeros(upper.shape, device=self.device).masked_fill(upper, -torch.inf).to(self.screen)

    @property
    def exemplars(self) -> torch.Tensor:
        return self._e32[: self._k]  # [K, d] float32, a view: do not modify

    @property
    def num_exemplars(self) -> int:
        return self._k

    def add(self, directions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stream a batch [B, d] of unit rows -> is_new [B] bool, nearest [B] int64, similarity [B] float32.

        nearest is the exemplar a row joins at arrival: the most similar of ALL exemplars that exist when
        it arrives (those of earlier batches and those born earlier in this batch; an exemplar is its own
        nearest, similarity 1), exactly what one row at a time gives, so the result does not depend on
        how the stream is batched. Argmax and similarity are on dot64 (ties: lowest id).

        >>> lc = LeaderClustering(2, threshold=0.3, device="cpu")
        >>> [t.tolist() for t in lc.add([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])]
        [[True, True, False], [0, 1, 1], [1.0, 1.0, 0.800000011920929]]
        """
        return self._add_rows(_as_rows(directions, self.dim).to(self.device))

    def _add_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """add() without the input checks: x [B, d] float32, contiguous, finite, on self.device."""
        out, s = [], 0
        while s < x.shape[0] or not out:
            step = self._step()
            is_new, near, sim = self._add(x[s : s + step], nearest=True)
            out.append((is_new, near, sim.float()))
            s += step
        return tuple(torch.cat(t) for t in zip(*out))

    def _step(self) -> int:
        """Rows per sub-batch. A sub-batch's rows that match no earlier exemplar meet each other in the
        within-batch stage, whose graph of pairs within threshold is dense on real (anisotropic) activations.
        So sub-batches are sized to expect no more of those rows than there are exemplars: step * f <= K,
        f the fraction of rows the last sub-batch left unmatched (1 until one has run), in `_bucket` sizes
        (GEMM shapes repeat). Capped in size because a fresh block over 32 MB (glibc's largest reused one)
        is mapped anew every time, and faulting its pages in costs as much as the arithmetic."""
        return _bucket(max(SUB_BATCH, min(int(self._k / self._unmatched), MAX_ROWS_X_DIM // self.dim)))

    @torch.no_grad()
    def _add(self, x: torch.Tensor, nearest: bool):
        """One sub-batch x [B, d] -> is_new [B], nearest [B] (-1 unless `nearest`), similarity [B] float64.

        The similarity rounds to fp32 exactly as dot64 does (see `_settled`)."""
        B, d, tau, k0, dev = x.shape[0], self.dim, self.tau, self._k, self.device
        is_new = torch.zeros(B, dtype=torch.bool, device=dev)
        near = torch.full((B,), -1, dtype=torch.int64, device=dev)
        sim = torch.ones(B, dtype=torch.float64, device=dev)
        if B == 0:
            return is_new, near, sim
        xb, eps, rnorm = _screen_rows(x, self.screen)  # [B, d] x in the screen dtype, [B] ||x - xb||, [B] norms
        norm, eps_o = max(self._norm, rnorm.max().item()), max(self._eps, eps.max().item())
        m_tau = _margin(eps, eps_o, norm, d, tau, self._u)  # [B]
        m_one = _margin(eps, eps_o, norm, d, norm * norm, self._u)  # [B]
        lo, hi, tol = tau - m_tau, tau + m_tau, _tol(d, norm)  # [B], [B], float

        # 1. against the exemplars of earlier batches
        matched, near, sim = self._match_old(x, xb, lo, hi, m_one, tol, near, sim, nearest)
        # 2. the other rows among themselves: leaders become exemplars, followers join the nearest one
        u = (~matched).nonzero()[:, 0]  # [n]
        self._unmatched = max(u.shape[0], 1) / B  # (never 0: sizes the next sub-batch, see _step)
        lead, near_u, sim_u = self._within(x, xb, u, lo[u], hi[u], m_one[u], tol, nearest)
        is_new[u[lead]] = True
        if nearest:
            near[u], sim[u] = near_u, sim_u
        new = u[lead]
        self._append(x, xb, new, eps[new], rnorm[new])
        # 3. rows matched in step 1 may be more similar still to an exemplar born earlier in this batch
        if nearest:
            self._arrival_nearest(x, xb, is_new, near, sim, m_one, tol, k0)
        return is_new, near, sim

    def _match_old(self, x, xb, lo, hi, m_one, tol, near, sim, nearest: bool):
        """Rows x [B, d] within threshold of an exemplar of an earlier batch, and (if `nearest`) their nearest.

        Screen scores in blocks of columns; a row whose max is > hi is surely matched, < lo surely not; its
        nearest is among the scores within 2 m_one of the max; the open cases are settled in float64."""
        B, k0, dev = x.shape[0], self._k, self.device
        best = torch.full((B,), -torch.inf, dtype=torch.float64, device=dev)
        found, step = [], max(GROUP, CHUNK // B // GROUP * GROUP)
        for c0 in range(0, k0, step):
            w = min(k0 - c0, step)
            wp = _bucket(w)  # padded with spare rows of _es (any bits) ...
            s = self._mm(xb, self._es[c0 : c0 + wp], B, wp)  # [B, wp]
            if wp > w:
                s[:, w:] = -torch.inf  # ... whose scores are overwritten
            bm, cmax = _blockmax(s)
            if nearest:
                bound = torch.maximum(lo, cmax - 2 * m_one)
            else:  # only rows in the band need pairs; skip rows already surely matched
                bound = torch.where((cmax <= hi) & (best <= hi), lo, torch.inf)
            r, c, v = _at_least(s, bm, bound)
            best = torch.maximum(best, cmax)
            found.append((r, c + c0, v))
        matched = best > hi  # [B]
        if not found:
            return matched, near, sim
        r, c, v = (torch.cat(t) for t in zip(*found))
        keep = v >= best[r] - 2 * m_one[r] if nearest else ~matched[r]
        r, c = r[keep], c[keep]
        f, exact = _settled(x, r, self._e32, c, self.tau, tol)
        matched[r[f >= self.tau]] = True
        if nearest:
            top, arg = _argmax_exact(r, c, f, exact, B, tol, lambda m: _pair_dot64(x, r[m], self._e32, c[m]))
            near, sim = torch.where(matched, arg, near), torch.where(matched, top, sim)
        return matched, near, sim

    def _within(self, x, xb, u, lo, hi, m_one, tol, nearest: bool):
        """The sequential rule among the rows x[u] (u [n]) that matched no earlier exemplar. -> lead [n] bool,
        and (if `nearest`) each one's nearest exemplar id [n] and similarity [n] float64 (leaders: own, 1).

        Blocks of rows against all earlier rows give the pairs within threshold (screen, then float64 in
        the band); `_leaders` applies the rule to that graph."""
        n, dev, k0 = u.shape[0], self.device, self._k
        found = []
        xbu = torch.empty(_bucket(n), self.dim, dtype=xb.dtype, device=dev)  # [n padded, d]
        torch.index_select(xb, 0, u, out=xbu[:n])
        xbu[n:] = 0
        cols = xbu
        for r0 in range(0, n, ROW_BLOCK):
            r1 = min(n, r0 + ROW_BLOCK)
            wp = _bucket(r1)
            s = self._mm(xbu[r0:r1], cols[:wp], r1 - r0, wp)  # [b, wp]
            s[:, r0:r1] += self._tri[: r1 - r0, : r1 - r0]  # -inf on and above the diagonal
            s[:, r1:] = -torch.inf
            bm, _ = _blockmax(s)
            r, c, v = _at_least(s, bm, lo[r0:r1])
            found.append((r + r0, c, v))
        r, c, v = (torch.cat(t) for t in zip(*found)) if found else (lo.long(), lo.long(), lo)
        f = torch.full_like(v, torch.nan)
        exact = torch.zeros_like(r, dtype=torch.bool)
        band = (v <= hi[r]).nonzero()[:, 0]  # and v >= lo: only these need float64
        f[band], exact[band] = _settled(x, u[r[band]], x, u[c[band]], self.tau, tol)
        adj = (v > hi[r]) | (f >= self.tau)
        lead = _leaders(n, r[adj], c[adj])  # [n]
        if not nearest:
            return lead, None, None
        rank = k0 + torch.cumsum(lead, 0) - 1  # [n] global id of each leader
        fol = lead[c] & ~lead[r]  # followers' pairs with earlier leaders: all >= tau, one is the nearest
        r, c, v, f, exact = r[fol], c[fol], v[fol], f[fol], exact[fol]
        top = torch.full((n,), -torch.inf, dtype=torch.float64, device=dev).scatter_reduce(0, r, v, "amax")
        win = (v >= top[r] - 2 * m_one[r]).nonzero()[:, 0]
        r, c, f, exact = r[win], c[win], f[win], exact[win]
        todo = f.isnan().nonzero()[:, 0]
        f[todo], exact[todo] = _settled(x, u[r[todo]], x, u[c[todo]], self.tau, tol)
        top, j = _argmax_exact(r, c, f, exact, n, tol, lambda m: _pair_dot64(x, u[r[m]], x, u[c[m]]))
        near = torch.where(lead, rank, rank[j.clamp(max=n - 1)])
        return lead, near, torch.where(lead, 1.0, top)

    def _arrival_nearest(self, x, xb, is_new, near, sim, m_one, tol, k0: int) -> None:
        """In place: rows matched to an exemplar of an earlier batch may be more similar still to one born
        earlier in their own batch (exemplars k0, k0 + 1, ...). Screened, settled in float64."""
        pos = is_new.nonzero()[:, 0]  # [p] rows that became exemplars k0, k0+1, ...
        B = x.shape[0]
        if pos.numel() == 0:
            return
        # a follower's nearest already is its most similar earlier leader (every old exemplar is below tau)
        todo = ((near < k0) & (torch.arange(B, device=x.device) > pos[0])).nonzero()[:, 0]  # [t]
        if todo.numel() == 0:
            return
        wp = _bucket(pos.numel())
        s = self._mm(xb[todo], self._es[k0 : k0 + wp], todo.numel(), wp)  # [t, wp]
        born = torch.searchsorted(pos, todo)  # [t] leaders born before each row
        unborn = torch.arange(wp, device=x.device)[None, :] >= born[:, None]  # [t, wp] (and spare rows of _es)
        s.masked_fill_(unborn, -torch.inf)
        bm, _ = _blockmax(s)
        r, c, _ = _at_least(s, bm, sim[todo] - m_one[todo])  # could reach the current choice
        if r.numel() == 0:
            return
        r = todo[r]
        f, exact = _settled(x, r, self._e32, k0 + c, self.tau, tol)
        rows = torch.unique(r)
        row = torch.cat([rows, r])
        col = torch.cat([near[rows], k0 + c])
        f = torch.cat([sim[rows], f])
        exact = torch.cat([torch.zeros_like(rows, dtype=torch.bool), exact])
        best, win = _argmax_exact(row, col, f, exact, B, tol, lambda m: _pair_dot64(x, row[m], self._e32, col[m]))
        near[rows], sim[rows] = win[rows], best[rows]

    def _mm(self, a: torch.Tensor, b: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """a @ b.T in the screen dtype into a reused buffer (fresh outputs cost page faults). -> [rows, cols]

        oneDNN builds a kernel for every new shape, ~3 ms on this CPU (ten times a 1024 x 512 x 640 product),
        and rows and K change with every sub-batch: rows are padded with zeros to a `_bucket` size (callers
        choose bucketed cols), so a long build reuses a few dozen shapes instead of building new ones."""
        with _ieee_fp32():  # the bound needs an fp32 accumulator
            if rows * cols * self.dim < 1 << 22:  # tiny: skip oneDNN setup; an fp32 GEMM, same bound
                return self._out(rows, cols).copy_(torch.mm(a.float(), b.float().T))
            padded = _bucket(rows) if not a.is_cuda else rows
            if padded != rows:
                a = torch.cat([a, a.new_zeros(padded - rows, a.shape[1])])
            return torch.mm(a, b.T, out=self._out(padded, cols))[:rows]

    def _out(self, rows: int, cols: int) -> torch.Tensor:
        """A [rows, cols] view of the reused GEMM output buffer (screen dtype)."""
        if self._buf.numel() < rows * cols:
            self._buf = torch.empty(max(rows * cols, 2 * self._buf.numel()), dtype=self.screen, device=self.device)
        return self._buf[: rows * cols].view(rows, cols)

    def state(self) -> tuple[torch.Tensor, float, float]:
        """What a checkpoint needs: the exemplars [K, d] and the two error-bound maxima."""
        return self.exemplars.cpu().clone(), self._eps, self._norm

    def restore(self, exemplars: torch.Tensor, eps: float, norm: float) -> None:
        """Continue from ``state()``: the same exemplars, so every later decision is the same. The bounds are
        the larger of the saved ones and this screen's own (a checkpoint may come from the other screen)."""
        x = exemplars.to(self.device, torch.float32).contiguous()
        check_shape(x, self.dim, "exemplars")
        self._k, self._eps, self._norm = 0, 0.0, 0.0
        self._e32 = torch.empty(0, self.dim, device=self.device)
        self._es = self._e32.to(self.screen)
        xs, eps_x, rnorm = _screen_rows(x, self.screen)
        self._append(x, xs, torch.arange(x.shape[0], device=self.device), eps_x, rnorm)
        self._eps, self._norm = max(self._eps, float(eps)), max(self._norm, float(norm))

    def _append(self, x: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor, eps: torch.Tensor,
                rnorm: torch.Tensor) -> None:
        """New exemplars: rows idx [n] of x [B, d] (fp32) and of xb (x in the screen dtype), their eps and rnorm [n]."""
        k, n = self._k, idx.shape[0]
        if n == 0:
            return
        spare = max(GROUP, (k + n) // 8)  # rows past the last exemplar that a `_bucket` width may read
        if k + n + spare > self._e32.shape[0]:  # capacity doubling
            # from 64M entries: pages of empty() are only mapped when written, and growing copies everything
            cap = max(k + n + spare, 2 * self._e32.shape[0], (1 << 26) // self.dim)
            e32 = self._e32.new_empty(cap, self.dim)
            e32[:k] = self._e32[:k]  # (not torch.cat: it would write every row)
            es = e32 if self._es is self._e32 else self._es.new_empty(cap, self.dim)
            if es is not e32:
                es[:k] = self._es[:k]
            self._e32, self._es = e32, es
        torch.index_select(x, 0, idx, out=self._e32[k : k + n])  # gathered straight into place
        if self._es is not self._e32:
            torch.index_select(xb, 0, idx, out=self._es[k : k + n])
        self._k += n
        self._eps, self._norm = max(self._eps, eps.max().item()), max(self._norm, rnorm.max().item())
