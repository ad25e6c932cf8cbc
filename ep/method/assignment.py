"""New text on a dictionary: every token of some texts with the region it falls in (``Dictionary.assign_texts``).

The method layer imports no model code, yet ``d.assign_texts(model, texts)`` must run the model: the
extractor (``ep.model.activations.token_activations``) registers itself here when ``ep.model`` is imported
(``import ep`` does), as a plotting library's backend registers with it. What comes back is plain arrays
and the token strings, an ``Assignment``: one row per token, in text order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_extract: Callable | None = None  # (model, texts, layer, **extraction settings) -> an ActivationBatch


def register_extractor(extract: Callable) -> None:
    """How ``assign_texts`` turns texts into activations: ``extract(model, texts, layer, context_length=...,
    exact_context=..., progress=...)`` -> rows with ``.acts``, ``.doc``, ``.pos``, ``.token``."""
    global _extract
    _extract = extract


def extract(model, texts, layer: int, **settings):
    if _extract is None:
        raise RuntimeError("no activation extractor: import ep (or ep.model.activations) first")
    return _extract(model, texts, layer, **settings)


@dataclass(frozen=True)
class Assignment:
    """Every token of the assigned texts, in order, with its region and its cosine distance to that exemplar."""

    doc: np.ndarray       # [N] int64 index of the text
    pos: np.ndarray       # [N] int64 token position in that text
    token: np.ndarray     # [N] int64 token id
    tokens: list[str]     # [N] the token as text
    region: np.ndarray    # [N] int64 region of the token
    distance: np.ndarray  # [N] float32 cosine distance to the region's exemplar

    def __len__(self) -> int:
        return len(self.region)

    def text(self, i: int) -> list[tuple[str, int, float]]:
        """Text i as (token, region, distance) triples, in order."""
        rows = np.flatnonzero(self.doc == i)
        return [(self.tokens[r], int(self.region[r]), float(self.distance[r])) for r in rows]

    def __repr__(self) -> str:
        shown = " ".join(f"{t!r}->{int(k)}" for t, k in zip(self.tokens[:8], self.region[:8]))
        more = " ..." if len(self) > 8 else ""
        return (f"Assignment({len(self)} tokens of {len(np.unique(self.doc))} texts, "
                f"{len(np.unique(self.region))} regions: {shown}{more})")
