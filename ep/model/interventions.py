"""Direction ablation: remove a direction (or a few) from the residual stream while the model runs.

An EP region hands us a direction: its exemplar, or the mean direction of its members. Both live in
*centred* space (they are unit vectors of a − c, c the dictionary's spherical centre). There are two
ways to take a unit direction e out of an activation x, and they differ by where they put x along e:

- **plain** removal, x → x − (x·e) e: the component along e becomes 0 (Arditi et al. 2024);
- **centred** removal, x → c + (x − c) − ((x − c)·e) e = x − ((x − c)·e) e: the component along e
  becomes c·e, the centre's. This is the form the official EP README writes.

If harmful prompts sit at h along e, harmless ones at s and the centre between them, plain removal sends
harmful prompts to 0 (past the harmless ones when s ≈ 0), centred removal only to c·e. So centred removal
works when the centre sits near the harmless prompts and not when it sits halfway: *which* activations
the centre is computed from decides it. The paper (official ``scripts/exp_behavioral.py``) removes with
the centre of a dictionary built on all tokens of the prompts; a centre of final positions only lies about
halfway between harmful and harmless final positions. Notebook 04 shows both.

With k directions (the top-k regions), they are first orthonormalised and the whole span is removed:
x → x − Q Qᵀ (x − c) (c = 0 for plain). The :class:`Ablation` is an edit for ``ep.studies.refusal.generate``,
applied to the output of each chosen decoder block at every position and every generation step;
:class:`PerLayer` applies several at once, each at its own layer (e.g. every layer's own refusal region).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def orthonormal(directions: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """[k, d] or [d] directions -> [r, d] orthonormal rows spanning them (r ≤ k; near-dependent ones dropped)."""
    v = torch.as_tensor(directions).float()
    v = v[None] if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"expected directions [k, d] or [d], got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("directions contain NaN or inf")
    q, r = torch.linalg.qr(v.T)  # q [d, k], columns orthonormal; |r_ii| is the new part of direction i
    keep = r.diagonal().abs() > tol * v.norm(dim=1).clamp_min(1e-30)
    if not bool(keep.any()):
        raise ValueError("all directions are zero")
    return q.T[keep].contiguous()  # [r, d]


def project_out(x: torch.Tensor, basis: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """Remove span(basis) from x [..., d]: x − ((x − c) Qᵀ) Q, basis Q [k, d] orthonormal rows.

    ``centre=None`` is plain removal (c = 0): the component along the span becomes 0. With a centre
    it becomes the centre's own component (centred removal). Computed in float32, returned in x's dtype.
    """
    q = basis.to(x.device, torch.float32)
    xf = x.float()
    shifted = xf if centre is None else xf - centre.to(x.device, torch.float32)
    return (xf - (shifted @ q.T) @ q).to(x.dtype)


@dataclass
class Ablation:
    """Remove ``directions`` [k, d] (orthonormalised) from the output of each block in ``layers``.

    ``centre`` [d] selects centred removal (``None``: plain). Pass it to ``ep.studies.refusal.generate(edit=...)``.
    """

    directions: torch.Tensor
    layers: tuple[int, ...]
    centre: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.basis = orthonormal(self.directions)  # [r, d]
        self.layers = tuple(sorted({int(layer) for layer in self.layers}))
        if not self.layers:
            raise ValueError("an ablation needs at least one layer")
        if self.centre is not None:
            self.centre = torch.as_tensor(self.centre).float().reshape(-1)
            if self.centre.shape[0] != self.basis.shape[1]:
                raise ValueError(f"centre has width {self.centre.shape[0]}, directions {self.basis.shape[1]}")

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return project_out(hidden, self.basis, self.centre)

    def key(self) -> tuple:
        """What decides the edit (layers, orthonormal basis, centre), hashable: equal keys, equal edits.

        Lets a caller run one generation per distinct edit, e.g. when the same exemplar tops several dictionaries."""
        def digest(t: torch.Tensor | None) -> str:
            return "" if t is None else hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()

        return ("ablation", self.layers, tuple(self.basis.shape), digest(self.basis), digest(self.centre))


class PerLayer:
    """Several :class:`Ablation` s applied together, each at its own layers: one edit for ``generate``.

    E.g. the top refusal region of each layer's dictionary, removed at that layer (EP's counterpart of
    removing the DiffMean direction at every layer). Two ablations may not edit the same layer.
    """

    def __init__(self, ablations: Sequence[Ablation], name: str = ""):
        self.by_layer: dict[int, Ablation] = {}
        for ablation in ablations:
            for layer in ablation.layers:
                if layer in self.by_layer:
                    raise ValueError(f"two ablations edit layer {layer}")
                self.by_layer[layer] = ablation
        if not self.by_layer:
            raise ValueError("PerLayer needs at least one ablation")
        self.layers, self.name = tuple(sorted(self.by_layer)), name

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return self.by_layer[layer](hidden, layer)


def diff_in_means(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Unit difference of means, [N1, d] and [N2, d] -> [d] (Arditi et al.'s refusal direction)."""
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise ValueError(f"expected [N1, d] and [N2, d], got {tuple(positive.shape)} and {tuple(negative.shape)}")
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("both sets need at least one row")
    return unit_difference(positive.double().mean(0), negative.double().mean(0))


def unit_difference(positive_mean: torch.Tensor, negative_mean: torch.Tensor) -> torch.Tensor:
    """(a − b) / ‖a − b‖ of two means [d] -> [d] float32, computed in float64; equal means have no direction."""
    diff = positive_mean.double() - negative_mean.double()
    if float(diff.norm()) == 0.0:
        raise ValueError("the two means are equal: no direction")
    return (diff / diff.norm()).float()


def random_direction(d: int, seed: int) -> torch.Tensor:
    """A uniformly random unit direction [d] (seeded): the control every chosen direction is read against."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine between two [d] vectors."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def subspace_cosine(basis_dirs: torch.Tensor, v: torch.Tensor) -> float:
    """Norm of the projection of unit ``v`` [d] onto span(basis_dirs [k, d]): the cosine to the span."""
    q = orthonormal(basis_dirs).double()
    u = v.double().reshape(-1) / v.double().norm()
    return float((q @ u).norm())


def projections(acts: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """acts [N, d] -> [N] coordinates along the unit ``direction`` [d]."""
    e = direction.float().reshape(-1)
    return acts.float() @ (e / e.norm())


def layers_all(n_layers: int) -> tuple[int, ...]:
    """Every decoder block, for 'at all layers' ablations."""
    return tuple(range(n_layers))
