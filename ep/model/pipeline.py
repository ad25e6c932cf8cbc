"""One call from a model, texts and a layer to a dictionary that knows where it came from: ``ep.build``.

Notebook 02 walks through the steps one by one (extract, calibrate, stream through leader clustering);
every later notebook needs "a dictionary of layer L on these texts" as a starting point, so the recipe
lives here once:

    >>> model, info = ep.load_model("gemma-3-270m")
    >>> d = ep.build(model, ep.data.corpus(), layer=9, max_tokens=20_000)
    >>> d.config.layer, d.region(0)          # provenance, and a region shown with its contexts

The first ``calibration_docs`` texts fix the centre and θ and are never streamed; the texts after them
are streamed until ``max_tokens``. The calibration is cached on disk, keyed by everything it depends on:
the model's identity (name and a fingerprint of its weights, so a retrained sibling never reuses an old
one), the calibration texts themselves, the layer and every extraction setting. The build records a
``BuildConfig`` in the dictionary's file (as SAELens writes its config into every SAE) and attaches
human-readable contexts, so ``d.region(k)`` shows a region without the documents. ``BuildConfig`` (its
defaults, and the provenance fields the build fills in) lives in ``ep.method.config``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable

import torch

from .._version import __version__
from ..data import source
from ..method.builder import build_dictionary
from ..method.calibration import Calibration, cached_calibration, calibrate
from ..method.config import BuildConfig
from ..method.dictionary import Dictionary
from ..method.files import cache_dir
from ..show.display import Contexts
from .activations import iter_token_activations, long_enough, token_activations


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: sha256 over the first 1,024 values of every parameter tensor."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().flatten()[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build(model, texts: Iterable[str], layer: int, config: BuildConfig | None = None, *, checkpoint=None,
          on_batch=None, on_activations=None, progress: bool = True, **overrides) -> Dictionary:
    """Calibrate on the first ``calibration_docs`` texts, stream the rest through leader clustering -> Dictionary.

    The settings are a ``BuildConfig`` (its defaults: a small CPU build), changed by ``config`` and/or keyword
    overrides named like its fields (``ep.build(model, texts, 9, percentile=10, max_tokens=5_000)``); the
    dictionary keeps the config with the model's name and fingerprint, the layer and the data source filled in
    (``d.config``), and its calibration (``d.calibration``).

    θ follows the paper's protocol: the mean over batches of ``docs_per_batch`` whole calibration texts, in
    order, of the p-th percentile of within-batch pairwise cosine distances (``ep.calibrate``).
    ``texts`` is any iterable of strings (``ep.data.corpus()`` streams Wikipedia); document indices in the
    dictionary's contexts count from the first *streamed* text. ``checkpoint`` makes a long build resumable
    (see ``ep.build_dictionary``), as do ``saturation_window`` (the official stop rule: no new region in that
    many batches of ``batch_size`` texts; the official batch is 128 texts) and ``on_batch(tokens, regions)``.
    ``exact_context=True`` reads each text as the official builder does: ``context_length`` activations after
    BOS, texts shorter than that skipped (``ep.iter_token_activations``); the paper-scale build is
    ``ep.build(model, ep.data.corpus("pile"), layer, percentile=10, calibration_docs=1_664, batch_size=128,
    context_length=128, exact_context=True, max_tokens=1_000_000, saturation_window=1)``: the official
    ``build_partitions.py`` defaults (its 200k calibration tokens are 13 batches of 128 documents of 128 tokens).
    ``on_activations(batch)`` sees every streamed ``ActivationBatch`` (e.g. ``list.append``, to train an SAE on the
    very tokens the dictionary was built from without a second forward pass).
    """
    settings = (config or BuildConfig()).replace(**overrides)
    texts = iter(texts)
    if settings.exact_context:  # only texts that fill the context, for the calibration and the stream (official)
        texts = (text for _, text in long_enough(model.tokenizer, texts, settings.context_length))
    calibration_texts = list(itertools.islice(texts, settings.calibration_docs))
    if len(calibration_texts) < 2:
        raise ValueError(f"need at least 2 calibration texts, got {len(calibration_texts)}")
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    config = dataclasses.replace(settings, model=name, model_fingerprint=model_fingerprint(model), layer=int(layer),
                                 percentile=float(settings.percentile), calibration_docs=len(calibration_texts),
                                 exact_context=bool(settings.exact_context), data_source=source(),
                                 ep_version=__version__)
    extract = dict(context_length=config.context_length, batch_size=config.batch_size, progress=progress,
                   exact_context=config.exact_context)
    key = {**config.to_dict(), "max_tokens": None, "n_samples": None, "ep_version": None,  # not what θ depends on
           "saturation_window": None,
           "texts": hashlib.sha256("\x00".join(calibration_texts).encode()).hexdigest(), "extractor": "token",
           "calibration_protocol": "documents",
           "numerics": "vml-warmed"}  # older caches may hold activations hit by the race ep.method.device.warm_vml ends

    def compute() -> Calibration:
        batch = token_activations(model, calibration_texts, layer, desc="calibration", **extract)
        return calibrate(batch, config.percentile, seed=config.seed, docs_per_batch=config.docs_per_batch)

    calibration = cached_calibration(key, compute, cache_dir() / "calibrations")
    calibration = dataclasses.replace(calibration, meta={})  # the config names the model and layer, once
    streamed: list[str] = []
    recorded = (streamed.append(t) or t for t in texts)  # keep the streamed texts for the contexts
    stream = iter_token_activations(model, recorded, layer, max_tokens=config.max_tokens, **extract)
    if on_activations is not None:
        stream = (on_activations(b) or b for b in stream)
    dictionary = build_dictionary(stream, calibration, n_samples=config.n_samples, progress=progress,
                                  meta={"config": config.to_dict()}, checkpoint=checkpoint,
                                  saturation_window=config.saturation_window, on_batch=on_batch)
    dictionary.meta["texts_read"] = len(calibration_texts) + len(streamed)  # held-out text starts after these
    length = config.context_length + (model.tokenizer.num_special_tokens_to_add() if config.exact_context else 0)
    return dictionary.with_contexts(_lookup(model.tokenizer, streamed, dictionary, length))


def _lookup(tokenizer, texts: list[str], dictionary: Dictionary, context_length: int):
    """The (left, token, right) lookup of the texts the dictionary's contexts point at (only those are tokenized)."""
    docs = torch.cat([dictionary.exemplar_context[:, 0], dictionary.nearest_contexts[..., 0].flatten(),
                      dictionary.farthest_contexts[..., 0].flatten()])
    used = set(docs[docs >= 0].tolist())
    return Contexts(tokenizer, [t if i in used else "" for i, t in enumerate(texts)], context_length).snippet
