"""``ActivationBatch``: rows of activations that know where they came from, the unit every builder streams.

Each row is one token: its activation, the index of its text in the stream, its position in that text and
its token id. The extractors of ``ep.model.activations`` yield these; the builder, the calibration and the
studies read them. It lives with the method because the method consumes it (and imports no model code).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FIELDS = ("acts", "doc", "pos", "token")


@dataclass
class ActivationBatch:
    acts: torch.Tensor  # [n, d] float32
    doc: torch.Tensor  # [n] int64, index of the text in the stream
    pos: torch.Tensor  # [n] int64, token position in the (tokenized, truncated) text
    token: torch.Tensor  # [n] int64, token id

    def __len__(self) -> int:
        return len(self.acts)

    def __getitem__(self, rows) -> ActivationBatch:
        """The same rows of every field: a slice, a bool mask [n] or indices (``batch[:100]``, ``batch[keep]``)."""
        return ActivationBatch(*(getattr(self, f.name)[rows] for f in fields(self)))

    def select(self, mask) -> ActivationBatch:
        """The rows where ``mask`` [n] is true."""
        return self[torch.as_tensor(mask, dtype=torch.bool)]

    @staticmethod
    def cat(batches: list[ActivationBatch]) -> ActivationBatch:
        if not batches:
            raise ValueError("no activations: the text stream was empty")
        return ActivationBatch(*(torch.cat([getattr(b, f) for b in batches]) for f in FIELDS))
