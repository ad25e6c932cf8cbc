"""
Leader clustering of unit vectors: exact, and fast thanks to a low-precision filter (bf16 or fp32).

Rows arrive in order; row i becomes an *exemplar* iff its cosine distance 1 - cos to every earlier
exemplar is > threshold, i.e. cos < tau = 1 - threshold for all of them: the one-pass "region" step
of Exemplar Partitioning. Each decision depends on all earlier ones, so a fast version must decide
every comparison exactly like the one-row-at-a-time loop, whatever the batching.

Exactness: cos >= tau is decided on `dot64`, float64 products of the fp32 entries (exact) summed in
a fixed order, independent of BLAS blocking, batch size and device; `leader_cluster_reference`
decides on the same numbers. Results are identical for every batch size.

Speed: scores come from a GEMM in the *screen* dtype with a proven error bound m (`_margin`): a score
> tau + m is surely a match, < tau - m surely not; only the few pairs in between, and each row's
candidates for its nearest exemplar, are recomputed in float64
(`_settled`: any summation order is within `_tol` of dot64, and dot64 itself is used only where that
leaves the decision, the fp32 rounding of the similarity or the argmax open). The candidates are
found from maxima over blocks of 16 columns (`_blockmax`, `_at_least`), not by scanning every score
twice. Which of a batch's unmatched rows become exemplars is settled in rounds of tensor ops on the
sparse "within threshold" graph (`_leaders`), not row by row.

The screen follows the hardware (`ep.method.device.screen_dtype`): bf16 where it is native (AMX /
avx512_bf16, Ampere+; several times the fp32 rate there), fp32 elsewhere (where a bf16 GEMM is emulated
and runs ~8x slower than fp32). Both give the same exemplars; only the margin m differs.

The fast engine (the ``LeaderClustering`` state and its numerics) is private, in ``ep.method._engine``; this
module holds the definition (``leader_cluster_reference``) and the public calls.
"""

import numpy as np
import torch

from ._engine import LeaderClustering, _as_rows, _check_threshold, dot64
from .device import torch_threads

__all__ = ["LeaderClustering", "dot64", "leader_cluster", "leader_cluster_reference"]


def leader_cluster_reference(directions, threshold: float) -> np.ndarray:
    """The specification, one row at a time: row i is an exemplar iff dot64 with every earlier exemplar < tau.

    Everything else in this module is a faster way to get exactly this answer (tests check it).

    >>> leader_cluster_reference([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], threshold=0.3)
    array([0, 2])

    Row 1 is at cosine distance 0.2 <= 0.3 from exemplar 0 and joins it; row 2 is at distance 1 from
    exemplar 0 and becomes exemplar 2 (ids are row indices).

    A float64 matrix-vector product screens; it differs from dot64 by < 2 d 2^-53 R^2, so only scores
    within 1e-9 R^2 of tau (possible ties) are recomputed with dot64 itself."""
    x = _as_rows(directions).double()
    _check_threshold(threshold)
    tau, ex, e = 1.0 - float(threshold), [], torch.empty_like(x)  # e[:k]: the exemplars so far
    tol = 1e-9 * max(1.0, x.norm(dim=1).max().item() ** 2)
    for i in range(x.shape[0]):
        k = len(ex)
        s = e[:k] @ x[i]  # [k]
        tie = (s - tau).abs() <= tol
        if not bool((s >= tau + tol).any()) and not bool((dot64(e[:k][tie], x[i].expand(k, -1)[tie]) >= tau).any()):
            e[k] = x[i]
            ex.append(i)
    return np.asarray(ex, dtype=np.int64)


def leader_cluster(directions, threshold: float, batch_size: int = 4096,
                   screen: torch.dtype | None = None) -> np.ndarray:
    """Indices (int64, arrival order) of the rows of directions [N, d] (float32 unit rows) that become
    exemplars. Identical for every batch_size and screen (`LeaderClustering`), and to `leader_cluster_reference`."""
    x = _as_rows(directions)
    _check_threshold(threshold)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lc = LeaderClustering(x.shape[1], threshold, device=x.device if x.is_cuda else None, screen=screen)
    bs, out = int(batch_size), []
    s = 0
    while s < x.shape[0]:
        step = min(bs, lc._step())  # as in add(): sub-batches grow with K
        with torch_threads(None):
            is_new = lc._add(x[s : s + step].to(lc.device), nearest=False)[0]
        out.append(is_new.nonzero()[:, 0].cpu() + s)
        s += step
    return torch.cat(out).numpy().astype(np.int64)
