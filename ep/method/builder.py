"""
Streaming construction of an EP dictionary: DictionaryBuilder and build_dictionary.

DictionaryBuilder streams activation batches (anything with .acts [n, d] and .doc, .pos,
.token [n]) and keeps O(K·d + K·S) state (K regions, S samples per region): the exemplars
(inside LeaderClustering), per-region member counts and sums of member unit directions
(giving the mean direction and the coherence ||Σu|| / count), and per region the S
members nearest to and farthest from the exemplar, so a notebook can show what a region
"means". Members are assigned at arrival, so one pass suffices. Updates are vectorised
(bincount, index_add, sorts): no per-region or per-row Python loops.

Long builds survive: ``build_dictionary(..., checkpoint=path, checkpoint_every=N)`` writes the whole
state atomically every N tokens; run the same call again after a crash (a Colab session that died) and
it skips the tokens already streamed and continues, to a byte-identical dictionary. The official
builder's saturation stop (no new region for W consecutive batches) is there too, off by default, and
``saturation_stop`` reads the same rule off a build's curve, counted in the official's batches of 128 documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from .calibration import Calibration, load_arrays, save_arrays
from .device import torch_threads
from .dictionary import Dictionary
from .leader import LeaderClustering
from .rows import check_shape


def _merge_top(dist_state: torch.Tensor, ctx_state: torch.Tensor, region: torch.Tensor,
               dist: torch.Tensor, ctx: torch.Tensor, largest: bool) -> None:
    """
    In place: per region keep the S candidates of smallest (largest) distance, ties to the
    earliest stream index. dist_state [K, S] (NaN pad), ctx_state [K, S, 4] (-1 pad);
    candidates region [M], dist [M], ctx [M, 4] (column 3 = stream index, larger than any kept one).
    Trick: drop candidates no better than a full region's worst sample (a tie loses: it came later);
    pool the touched regions' samples (in slot order) with the rest (in stream order), so one
    stable sort by (region, ±dist) orders ties by stream index; rank within each region, and
    write back the rows of rank < S.
    """
    S = dist_state.shape[1]
    if S == 0 or region.numel() == 0:
        return
    worst = dist_state[:, S - 1].index_select(0, region)  # [M], NaN while the region has < S samples
    keep = ~(dist >= worst if not largest else dist <= worst)  # NaN compares False: kept
    if not bool(keep.all()):
        keep = keep.nonzero()[:, 0]
        region, dist, ctx = region.index_select(0, keep), dist.index_select(0, keep), ctx.index_select(0, keep)
        if region.numel() == 0:
            return
    # flat slot = region * S + j; index_select / index_copy_ (fancy indexing is slow on CPU)
    flat_d, flat_c = dist_state.view(-1), ctx_state.view(-1, 4)     # [K*S], [K*S, 4]
    touched = torch.unique(region)                                   # [T]
    slots = (touched[:, None] * S + torch.arange(S, device=region.device)).reshape(-1)  # [T*S]
    kept = slots.index_select(0, (flat_c.index_select(0, slots)[:, 3] >= 0).nonzero()[:, 0])  # drop padding
    reg = torch.cat([kept // S, region])                             # the pool, [P]
    dst = torch.cat([flat_d.index_select(0, kept), dist])
    cx = torch.cat([flat_c.index_select(0, kept), ctx])
    bits = dst.view(torch.int32).long()  # float order as integers: flip the magnitude bits of negatives
    key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31    # [P] in [0, 2^32)
    key = (2**32 - 1 - key) if largest else key
    order = torch.sort(reg * 2**32 + key, stable=True).indices
    reg = reg.index_select(0, order)                                 # sorted by region
    rank = torch.arange(reg.numel(), device=reg.device) - torch.searchsorted(reg, reg)
    sel = (rank < S).nonzero()[:, 0]
    dest, src = reg.index_select(0, sel) * S + rank.index_select(0, sel), order.index_select(0, sel)
    flat_d.index_fill_(0, slots, float("nan"))
    flat_c.index_fill_(0, slots, -1)
    flat_d.index_copy_(0, dest, dst.index_select(0, src))
    flat_c.index_copy_(0, dest, cx.index_select(0, src))


_STATE = ("counts", "sums", "ex_ctx", "near_dist", "near_ctx", "far_dist", "far_ctx")


CHECKPOINT_KEY = "ep_build_checkpoint"


class DictionaryBuilder:
    """Streaming state of a dictionary under construction: add(batch)..., snapshot() at any time."""

    def __init__(self, calibration: Calibration, *, n_samples: int = 8, device=None,
                 chunk_size: int = 4096, meta: dict | None = None, threads: int | None = None):
        """threads: CPU threads per batch; None re-decides each batch from the cores other tasks leave free."""
        theta = float(calibration.threshold)
        if not (math.isfinite(theta) and theta > 0):
            raise ValueError(f"threshold must be finite and > 0, got {theta}")
        if n_samples < 0 or chunk_size < 1:
            raise ValueError(f"need n_samples >= 0 and chunk_size >= 1, got {n_samples}, {chunk_size}")
        self.calibration, self.n_samples, self.chunk_size = calibration, int(n_samples), int(chunk_size)
        self.threads = threads
        self.dim, self.meta, self.tokens = int(calibration.centre.shape[0]), dict(meta or {}), 0
        self.leader = LeaderClustering(self.dim, theta, device=device)  # None: cuda if available
        self.device = self.leader.device
        self.centre = calibration.centre.detach().to(self.device, torch.float32)  # [d]
        self._cap = 0
        self._grow(0, 0)
        self._ubuf = torch.empty(0, self.dim, device=self.device)  # scratch for the directions of a chunk

    def _grow(self, cap: int, keep: int) -> None:
        """Reallocate per-region state with capacity `cap`, keeping rows [:keep]. The sums of later rows are
        left unset (zeroed as their regions appear): fresh pages cost a fault each, only touch what is used."""
        S, kw = self.n_samples, {"device": self.device}
        new = {"counts": torch.zeros(cap, dtype=torch.int64, **kw),                 # [cap]
               "sums": torch.empty(cap, self.dim, dtype=torch.float64, **kw),      # [cap, d] Σ u
               "ex_ctx": torch.full((cap, 4), -1, dtype=torch.int64, **kw),         # [cap, 4]
               "near_dist": torch.full((cap, S), float("nan"), **kw),               # [cap, S]
               "near_ctx": torch.full((cap, S, 4), -1, dtype=torch.int64, **kw),    # [cap, S, 4]
               "far_dist": torch.full((cap, S), float("nan"), **kw),
               "far_ctx": torch.full((cap, S, 4), -1, dtype=torch.int64, **kw)}
        for name, t in new.items():
            if keep:
                t[:keep] = getattr(self, "_" + name)[:keep]
            setattr(self, "_" + name, t)
        self._cap = cap

    @property
    def num_regions(self) -> int:
        return int(self.leader.num_exemplars)

    @property
    def nbytes(self) -> int:
        """Bytes of per-region state (the leader holds the exemplars on top: ~6·K·d bytes)."""
        return sum(getattr(self, "_" + n).nbytes for n in _STATE)

    @torch.no_grad()
    def add_arrays(self, acts, doc, pos, token) -> int:
        """Stream acts [n, d] with doc/pos/token [n]; returns the number of new regions."""
        with torch_threads(self.threads):
            return self._add_arrays(acts, doc, pos, token)

    def _add_arrays(self, acts, doc, pos, token) -> int:
        a = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.asarray(acts))
        check_shape(a, self.dim)
        n = a.shape[0]
        cols = [torch.as_tensor(x).reshape(-1).to(self.device, torch.int64) for x in (doc, pos, token)]
        if any(c.shape[0] != n for c in cols):
            raise ValueError(f"doc/pos/token must have {n} entries, got {[c.shape[0] for c in cols]}")
        ctx = torch.stack(cols + [self.tokens + torch.arange(n, device=self.device)], dim=1)  # [n, 4]
        one = n <= self.chunk_size  # one chunk: its directions' norms check it; else check all before adding any
        if not one and not bool(a.sum(dim=1).isfinite().all()) and not bool(torch.isfinite(a).all()):
            raise ValueError("acts contains NaN or inf")  # (a finite row sum proves the row finite)
        k0 = self.num_regions
        for s in range(0, n, self.chunk_size):  # re-chunk to the leader batch size
            self._add_chunk(self._directions(a[s:s + self.chunk_size], check=one), ctx[s:s + self.chunk_size])
        self.tokens += n
        return self.num_regions - k0

    def _directions(self, a: torch.Tensor, check: bool) -> torch.Tensor:
        """Raw rows a [B, d] -> centred unit rows [B, d] float32, the same numbers as `to_directions`.

        Written into a buffer reused from chunk to chunk: a fresh block over 32 MB is mapped anew by glibc
        every time, and faulting its pages in cost as much as the arithmetic (d = 2304). check: raise on
        NaN / inf, seen in the row norms (a non-finite row has a non-finite norm)."""
        B = a.shape[0]
        if self._ubuf.shape[0] < B:
            self._ubuf = torch.empty(B, self.dim, device=self.device)
        if a.dtype not in (torch.float32, torch.bfloat16, torch.float16):  # these widen to fp32 exactly
            a = a.float()  # as to_directions: round to fp32 first, then subtract in fp32
        x = torch.sub(a.to(self.device), self.centre, out=self._ubuf[:B])  # [B, d] float32
        norm = x.norm(dim=1, keepdim=True)  # [B, 1]
        if check and not bool(norm.isfinite().all()) and not bool(torch.isfinite(a).all()):
            raise ValueError("acts contains NaN or inf")
        return x.div_(norm.clamp_min(1e-12))

    def add(self, batch) -> int:
        """Stream one ActivationBatch-like object (.acts, .doc, .pos, .token)."""
        return self.add_arrays(batch.acts, batch.doc, batch.pos, batch.token)

    def _add_chunk(self, u: torch.Tensor, ctx: torch.Tensor) -> None:
        # u [B, d] unit rows, ctx [B, 4]
        k0 = self.num_regions
        is_new, nearest, sim = self.leader._add_rows(u)  # u is checked, contiguous, on the device
        k1 = self.num_regions
        if k1 != k0 + int(is_new.sum()):
            raise RuntimeError("LeaderClustering reported inconsistent exemplar counts")
        region = nearest                                    # [B] region at arrival (exact, any chunking)
        if k1 > self._cap:
            self._grow(max(k1, 2 * self._cap, 64), k0)      # amortised doubling
        self._counts[:k1] += torch.bincount(region, minlength=k1)
        self._sums[k0:k1] = u[is_new]                       # a new region's first member is its exemplar
        old = ~is_new                                       # exemplars are not sampled
        rest = old.nonzero()[:, 0]                          # (0 + u = u: the same sums as adding all rows)
        for s in range(0, rest.shape[0], 512):  # float64 copies in slices: no large fresh blocks
            i = rest[s:s + 512]
            self._sums.index_add_(0, region.index_select(0, i), u.index_select(0, i).double())
        self._ex_ctx[k0:k1] = ctx[is_new]
        dist = (1.0 - sim[old]).float()
        _merge_top(self._near_dist, self._near_ctx, region[old], dist, ctx[old], largest=False)
        _merge_top(self._far_dist, self._far_ctx, region[old], dist, ctx[old], largest=True)

    def save_checkpoint(self, path) -> None:
        """Atomically write the whole state (a crash mid-write leaves the previous checkpoint intact)."""
        k = self.num_regions
        exemplars, eps, norm = self.leader.state()
        arrays = {"centre": self.centre, "exemplars": exemplars,
                  **{name: getattr(self, "_" + name)[:k] for name in _STATE}}
        info = {"threshold": float(self.calibration.threshold), "tokens": self.tokens, "n_samples": self.n_samples,
                "meta": self.meta, "leader_eps": eps, "leader_norm": norm}
        save_arrays(path, arrays, info, CHECKPOINT_KEY)

    def load_checkpoint(self, path) -> None:
        """Continue from a checkpoint written by a builder with the same calibration and n_samples."""
        try:
            arrays, info = load_arrays(path, CHECKPOINT_KEY)
        except ValueError as e:
            raise ValueError(f"{path}: {e}; delete it to start the build afresh") from e
        same = (torch.equal(arrays["centre"].to(self.centre), self.centre)
                and info["threshold"] == float(self.calibration.threshold) and info["n_samples"] == self.n_samples)
        if not same:
            raise ValueError(f"{path} was written by a build with another calibration or n_samples: "
                             "delete it, or pass the calibration it was made with")
        self.leader.restore(arrays["exemplars"], info["leader_eps"], info["leader_norm"])
        k = self.leader.num_exemplars
        self._grow(max(k, 64), 0)
        for name in _STATE:
            getattr(self, "_" + name)[:k] = arrays[name].to(self.device)
        self.tokens, self.meta = int(info["tokens"]), info["meta"]

    def snapshot(self) -> Dictionary:
        """The current state as a Dictionary (the builder stays usable: stream more, snapshot again)."""
        k, cal = self.num_regions, self.calibration
        if k == 0:
            raise ValueError("no tokens streamed: cannot build an empty dictionary")
        sums = self._sums[:k]                                # [K, d] float64
        norm = sums.norm(dim=1)                              # [K]
        counts = self._counts[:k].cpu().clone()
        cpu = lambda t: t.to("cpu", copy=True)
        meta = {**self.meta, "calibration": cal.record(), "tokens_streamed": self.tokens, "num_regions": k,
                "n_samples": self.n_samples, "ep_version": __version__}
        return Dictionary(
            centre=cpu(self.centre), threshold=float(cal.threshold),
            exemplars=cpu(self.leader.exemplars[:k].float()), counts=counts,
            mean_directions=(sums / norm.clamp_min(1e-300)[:, None]).to("cpu", torch.float32),
            coherence=(norm / counts.to(norm)).to("cpu", torch.float32),
            exemplar_context=cpu(self._ex_ctx[:k, :3]).contiguous(), exemplar_index=cpu(self._ex_ctx[:k, 3]),
            nearest_contexts=cpu(self._near_ctx[:k]), nearest_dist=cpu(self._near_dist[:k]),
            farthest_contexts=cpu(self._far_ctx[:k]), farthest_dist=cpu(self._far_dist[:k]), meta=meta)


OFFICIAL_BATCH_DOCS = 128  # texts per batch of the official builder, the unit of its stop rule
#                            (scripts/build_partitions.py build_dictionary: prompt_batch_size = --model-batch-size 128)


def saturation_stop(docs, regions, window: int = 1, docs_per_batch: int = OFFICIAL_BATCH_DOCS) -> int | None:
    """Where the official stop rule ends a build, read off the build's curve; None if it never fires.

    docs[i], regions[i]: documents streamed and regions after the i-th point of the curve (recorded at least
    every ``docs_per_batch`` documents). The curve is regrouped into batches of ``docs_per_batch`` whole documents,
    the official's batch, and the rule of the official ``discover`` (ep/discovery/pipeline.py: stop once
    ``saturation_window`` consecutive batches bring no new region; ``build_dictionary`` defaults it to 1) stops
    after the first ``window`` quiet batches in a row. Returns the index of the curve point that ends that batch;
    a final, partial batch never counts. ``build_dictionary(saturation_window=W)`` applies the same rule to the
    batches it is given: give it batches of ``docs_per_batch`` documents (``ep.build(batch_size=128)``).
    """
    docs, regions = np.asarray(docs, dtype=np.int64), np.asarray(regions, dtype=np.int64)
    if window < 1 or docs_per_batch < 1 or docs.shape != regions.shape:
        raise ValueError("need window >= 1, docs_per_batch >= 1 and one region count per point")
    ends = np.flatnonzero((docs % docs_per_batch == 0) & (docs > 0))
    ends = ends[np.r_[True, docs[ends][1:] != docs[ends][:-1]]] if len(ends) else ends  # first point per boundary
    expected = np.arange(1, (docs.max(initial=0) // docs_per_batch) + 1) * docs_per_batch
    if not np.array_equal(docs[ends], expected):
        raise ValueError(f"the curve must have a point at every multiple of {docs_per_batch} documents")
    quiet = 0
    for batch, new in enumerate(np.diff(np.r_[0, regions[ends]])):
        quiet = quiet + 1 if new == 0 else 0
        if quiet >= window:
            return int(ends[batch])
    return None


def _skip(batches: Iterable, n: int):
    """The stream without its first n tokens (a resumed build has streamed them already)."""
    for batch in batches:
        if n >= len(batch.acts):
            n -= len(batch.acts)
            continue
        yield batch if n == 0 else batch[n:]
        n = 0


def build_dictionary(batches: Iterable, calibration: Calibration, *, n_samples: int = 8,
                     device=None, progress: bool = True, max_tokens: int | None = None,
                     on_batch: Callable[[int, int], None] | None = None,
                     meta: dict | None = None, chunk_size: int = 4096,
                     checkpoint=None, checkpoint_every: int = 1_000_000,
                     saturation_window: int | None = None) -> Dictionary:
    """
    One streaming pass over ActivationBatch-like objects -> Dictionary. max_tokens truncates
    the stream (no further batches are pulled); on_batch(tokens_so_far, num_regions) is
    called after every batch, e.g. to draw the saturation curve.

    checkpoint: a file path. If it exists the build resumes from it (the stream must be the same:
    its first tokens are skipped); the state is written there every checkpoint_every tokens and at
    the end. saturation_window: stop after that many consecutive batches without a new region
    (the official builder's rule; None, the default, streams everything).
    """
    from tqdm.auto import tqdm

    builder = DictionaryBuilder(calibration, n_samples=n_samples, device=device,
                                chunk_size=chunk_size, meta=meta)
    if checkpoint is not None and Path(checkpoint).exists():
        builder.load_checkpoint(checkpoint)
        batches = _skip(batches, builder.tokens)
    saved, quiet = builder.tokens, 0
    with tqdm(total=max_tokens, initial=builder.tokens, unit="tok", unit_scale=True, disable=not progress,
              desc="EP dictionary") as bar:  # shows tokens/s, and the ETA when max_tokens is given
        for batch in batches:
            keep = None if max_tokens is None else max(0, max_tokens - builder.tokens)
            n, k = builder.tokens, builder.num_regions
            builder.add_arrays(batch.acts[:keep], batch.doc[:keep], batch.pos[:keep], batch.token[:keep])
            bar.update(builder.tokens - n)
            bar.set_postfix(regions=builder.num_regions, refresh=False)
            if on_batch is not None:
                on_batch(builder.tokens, builder.num_regions)
            if checkpoint is not None and builder.tokens - saved >= checkpoint_every:
                builder.save_checkpoint(checkpoint)
                saved = builder.tokens
            quiet = quiet + 1 if builder.num_regions == k else 0
            if saturation_window is not None and quiet >= saturation_window:
                builder.meta["saturated_after_tokens"] = builder.tokens
                break
            if max_tokens is not None and builder.tokens >= max_tokens:
                break
    if checkpoint is not None and builder.tokens != saved:
        builder.save_checkpoint(checkpoint)
    return builder.snapshot()
