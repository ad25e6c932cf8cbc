"""One call from a model, texts and a layer to a dictionary that knows where it came from: ``ep.build``.

Notebook 02 walks through the steps one by one (extract, calibrate, stream through leader clustering);
every later notebook needs "a dictionary of layer L on these texts" as a starting point, so the recipe
lives here once:

    >>> model, info = ep.load_model("gemma-3-270m")
    >>> d = ep.build(model, ep.data.corpus(), layer=9, max_tokens=20_000)
    >>> d.meta["config"]["layer"], d.region(0)          # provenance, and a region shown with its contexts

The first ``calibration_docs`` texts fix the centre and θ and are never streamed; the texts after them
are streamed until ``max_tokens``. The calibration is cached on disk, keyed by everything it depends on:
the model's identity (name and a fingerprint of its weights, so a retrained sibling never reuses an old
one), the calibration texts themselves, the layer and every extraction setting. The build records a
``BuildConfig`` in the dictionary's metadata (as SAELens writes its config into every SAE) and attaches
human-readable contexts, so ``d.region(k)`` shows a region without the documents.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from .._version import __version__
from ..data import source
from ..method.builder import build_dictionary
from ..method.calibration import Calibration, cached_calibration, calibrate
from ..method.dictionary import Dictionary
from ..show.display import Contexts
from .activations import iter_token_activations, long_enough, token_activations
from .loading import cache_dir


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build depends on, written into the dictionary's metadata as ``meta["config"]``."""

    model: str                   # the model's name or path
    model_fingerprint: str       # sha256 over a slice of every weight tensor
    layer: int
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
    data_source: str = field(default_factory=source)  # the offline mirror or upstream (ep.data.source)
    ep_version: str = __version__


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: sha256 over the first 1,024 values of every parameter tensor."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().flatten()[:1024].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def build(model, texts: Iterable[str], layer: int, *, percentile: float = 1.0, calibration_docs: int = 100,
          docs_per_batch: int = 128, max_tokens: int | None = 20_000, context_length: int = 64,
          batch_size: int = 16, seed: int = 0, n_samples: int = 8, checkpoint=None,
          saturation_window: int | None = None, exact_context: bool = False, on_batch=None,
          on_activations=None, progress: bool = True) -> Dictionary:
    """Calibrate on the first ``calibration_docs`` texts, stream the rest through leader clustering -> Dictionary.

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
    very tokens the dictionary was built from without a second forward pass). ``ep.Calibration.of(d)`` gives back
    the calibration.
    """
    texts = iter(texts)
    if exact_context:  # only texts that fill the context, for the calibration and the stream alike (official)
        texts = (text for _, text in long_enough(model.tokenizer, texts, context_length))
    calibration_texts = list(itertools.islice(texts, calibration_docs))
    if len(calibration_texts) < 2:
        raise ValueError(f"need at least 2 calibration texts, got {len(calibration_texts)}")
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    config = BuildConfig(model=name, model_fingerprint=model_fingerprint(model), layer=int(layer),
                         percentile=float(percentile), calibration_docs=len(calibration_texts),
                         docs_per_batch=int(docs_per_batch), max_tokens=max_tokens,
                         context_length=context_length, batch_size=batch_size, seed=seed, n_samples=n_samples,
                         saturation_window=saturation_window, exact_context=bool(exact_context))
    extract = dict(context_length=context_length, batch_size=batch_size, progress=progress,
                   exact_context=bool(exact_context))
    key = {**asdict(config), "max_tokens": None, "n_samples": None, "ep_version": None,  # not what θ depends on
           "saturation_window": None,
           "texts": hashlib.sha256("\x00".join(calibration_texts).encode()).hexdigest(), "extractor": "token",
           "calibration_protocol": "documents",
           "numerics": "vml-warmed"}  # older caches may hold activations hit by the race ep.method.device.warm_vml ends

    def compute() -> Calibration:
        batch = token_activations(model, calibration_texts, layer, desc="calibration", **extract)
        return calibrate(batch, percentile, seed=seed, docs_per_batch=docs_per_batch,
                         meta={"model": name, "layer": int(layer)})

    calibration = cached_calibration(key, compute, cache_dir() / "calibrations")
    streamed: list[str] = []
    recorded = (streamed.append(t) or t for t in texts)  # keep the streamed texts for the contexts
    stream = iter_token_activations(model, recorded, layer, max_tokens=max_tokens, **extract)
    if on_activations is not None:
        stream = (on_activations(b) or b for b in stream)
    meta = {"config": asdict(config), "model": name, "layer": int(layer), "context_length": context_length}
    dictionary = build_dictionary(stream, calibration, n_samples=n_samples, progress=progress, meta=meta,
                                  checkpoint=checkpoint, saturation_window=saturation_window, on_batch=on_batch)
    dictionary.meta["texts_read"] = len(calibration_texts) + len(streamed)  # held-out text starts after these
    length = context_length + (model.tokenizer.num_special_tokens_to_add() if exact_context else 0)
    return dictionary.with_contexts(_lookup(model.tokenizer, streamed, dictionary, length))


def _lookup(tokenizer, texts: list[str], dictionary: Dictionary, context_length: int):
    """The (left, token, right) lookup of the texts the dictionary's contexts point at (only those are tokenized)."""
    docs = torch.cat([dictionary.exemplar_context[:, 0], dictionary.nearest_contexts[..., 0].flatten(),
                      dictionary.farthest_contexts[..., 0].flatten()])
    used = set(docs[docs >= 0].tolist())
    return Contexts(tokenizer, [t if i in used else "" for i, t in enumerate(texts)], context_length).snippet
