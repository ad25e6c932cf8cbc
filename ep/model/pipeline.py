"""Calibrate and build a corpus dictionary in one call, for the notebooks after 02.

Notebook 02 walks through the steps one by one; later notebooks need "a dictionary of layer L on
the corpus" as a starting point, so the recipe lives here once. The calibration is cached on disk,
keyed by everything it depends on.
"""

from __future__ import annotations

from .._version import __version__
from ..data import corpus
from ..method.builder import build_dictionary
from ..method.calibration import Calibration, cached_calibration, calibrate
from ..method.dictionary import Dictionary
from .activations import iter_token_activations, token_activations
from .loading import cache_dir


def corpus_dictionary(
    model, model_name: str, layer: int, *, percentile: float = 1.0, calib_docs: int = 100, max_tokens: int = 20_000,
    context_length: int = 64, batch_size: int = 16, seed: int = 0, n_samples: int = 8, progress: bool = True,
) -> tuple[Dictionary, Calibration]:
    """Calibrate on the first ``calib_docs`` corpus documents, build on the documents after them.

    Returns the dictionary and its calibration. Document indices in the dictionary's contexts count
    from ``calib_docs`` (the first build document is 0): use ``corpus(skip=calib_docs)`` to show them.
    """
    extract = dict(context_length=context_length, batch_size=batch_size, progress=progress)
    key = {"model": model_name, "layer": layer, "percentile": percentile, "calib_docs": calib_docs,
           "context_length": context_length, "seed": seed, "corpus": "ep.data.corpus", "extractor": "token"}

    def compute() -> Calibration:
        acts = token_activations(model, corpus(max_docs=calib_docs), layer, desc="calibration", **extract).acts
        return calibrate(acts, percentile, seed=seed, meta=key)

    calibration = cached_calibration(key, compute, cache_dir() / "calibrations")
    stream = iter_token_activations(model, corpus(skip=calib_docs), layer, max_tokens=max_tokens, **extract)
    meta = {**key, "threshold": calibration.threshold, "ep_version": __version__}
    dictionary = build_dictionary(stream, calibration, n_samples=n_samples, progress=progress, meta=meta)
    return dictionary, calibration
