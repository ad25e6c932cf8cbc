"""The one check of a matrix of rows, ``[N, d]``, so every function that takes activations or directions says
the same thing when handed the wrong shape."""

from __future__ import annotations

import numpy as np
import torch


def check_shape(rows, dim: int | None = None, name: str = "acts") -> None:
    """Raise ValueError unless ``rows`` is 2-D (and has ``dim`` columns, when given)."""
    if rows.ndim != 2 or (dim is not None and rows.shape[1] != dim):
        raise ValueError(f"{name} must be 2-D with shape [N, {'d' if dim is None else dim}], "
                         f"got shape {tuple(rows.shape)}")


def check_acts(acts, dim: int | None = None, name: str = "acts", allow_empty: bool = False) -> torch.Tensor:
    """numpy / torch [N, d] -> float torch tensor (no copy if possible), with clear errors (shape, empty, NaN)."""
    t = acts if isinstance(acts, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(acts))
    check_shape(t, dim, name)
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 rows)")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t
