"""``BuildConfig``: every setting a dictionary build depends on, with its defaults, in one place.

``ep.build(model, texts, layer, config=None, **overrides)`` reads its settings from here and nowhere else
(an override must name a field below); the dictionary it returns keeps the config in its file, and
``Dictionary.config`` gives it back typed, as SAELens keeps a config in every SAE. The provenance fields
(model, fingerprint, layer, data source, version) are filled in by the build, not chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .._version import __version__


@dataclass(frozen=True)
class BuildConfig:
    """The settings of a build (defaults: a laptop-CPU build) and, once built, where it came from."""

    percentile: float = 1.0
    calibration_docs: int = 100  # texts used only for the centre and θ (the paper: ~200k tokens)
    docs_per_batch: int = 128    # θ: mean over batches of this many whole calibration texts (the paper's CLI)
    max_tokens: int | None = 20_000  # tokens streamed into the build (the paper: 10M)
    context_length: int = 64     # tokens per text, BOS included (the paper: 128 after BOS, see exact_context)
    batch_size: int = 16         # texts per forward pass
    seed: int = 0
    n_samples: int = 8           # nearest and farthest members kept per region
    saturation_window: int | None = None  # stop after this many batches of batch_size texts without a new region
    #                                       (None: never; the official: 1 batch of 128 texts)
    exact_context: bool = False  # True: context_length activations after BOS, shorter texts skipped (the official)
    # provenance, written by ep.build
    model: str = ""              # the model's name or path
    model_fingerprint: str = ""  # sha256 over a slice of every weight tensor
    layer: int | None = None
    data_source: str = ""        # the offline mirror or upstream (ep.data.source)
    ep_version: str = __version__

    PROVENANCE = ("model", "model_fingerprint", "layer", "data_source", "ep_version")

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The fields a caller chooses (every field but the provenance)."""
        return tuple(f.name for f in fields(cls) if f.name not in cls.PROVENANCE)

    def replace(self, **overrides) -> BuildConfig:
        """A copy with some settings changed; a name that is not a setting raises, naming the valid ones."""
        if unknown := sorted(set(overrides) - set(self.settings())):
            raise TypeError(f"not a BuildConfig setting: {', '.join(unknown)}; the settings are "
                            f"{', '.join(self.settings())}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> BuildConfig:
        """Inverse of to_dict (a file's record; fields it lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})
