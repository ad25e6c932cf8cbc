"""Residual-stream activations, streamed with nnsight.

"Layer L" means the output of decoder block L (HF ``hidden_states[L + 1]``). Texts are tokenized
here (truncated to a fixed context length), run in batches, and the forward pass is stopped right
after block L, so the cost grows with L and not with the model's depth.

Two extractors, both generators of :class:`ActivationBatch` so memory stays bounded however many
tokens are streamed:
- :func:`iter_token_activations`: every real token (BOS and padding excluded);
- :func:`iter_final_activations`: the last real token of each text (e.g. a templated prompt).
Every row carries its provenance (document index, token position, token id), so a dictionary region
can later show the contexts that landed in it. ``remote=True`` runs the forwards on NDIF (``ep.model.remote``,
``docs/remote.md``): the same trace, shipped; only the saved block output comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..method.assignment import register_extractor
from ..method.batch import ActivationBatch  # noqa: F401 (re-exported: ep.model.activations.ActivationBatch)
from .remote import check_remote, inputs_on_device


def decoder_layers(model):
    """The list of decoder blocks of an nnsight-wrapped HF causal LM."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        module = model
        try:
            for name in path.split("."):
                module = getattr(module, name)
            return module
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {getattr(model.config, 'model_type', type(model).__name__)}")


def _check_layer(model, layer: int) -> None:
    n_layers = model.config.get_text_config().num_hidden_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")


def _batches(texts: Iterable[str] | Iterable[tuple[int, str]], batch_size: int) -> Iterator[list]:
    """Lists of batch_size items: texts, or (index, text) pairs (each text checked to be a str)."""
    batch: list = []
    for i, item in enumerate(texts):
        text = item[1] if isinstance(item, tuple) else item
        if not isinstance(text, str):
            raise TypeError(f"document {item[0] if isinstance(item, tuple) else i} is a {type(text).__name__}, "
                            "not a str")
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def layer_output(model, texts: list[str], layer: int, context_length: int = 128, add_special_tokens: bool = True,
                 remote: bool | str = False):
    """One batched forward to block ``layer`` → (hidden [B, T, d] float32, input_ids [B, T], mask [B, T]).

    Positions are derived from the attention mask, so a text gets the same activations whichever
    side it is padded on and whatever else shares its batch. ``remote``: run it on NDIF.
    """
    _check_layer(model, layer)
    check_remote(remote)
    enc = model.tokenizer(
        texts, return_tensors="pt", padding=True, truncation=True, max_length=context_length,
        add_special_tokens=add_special_tokens,
    )
    mask = enc["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids}
    with model.trace(inputs_on_device(model, inputs, remote), remote=remote) as tracer:
        hidden = decoder_layers(model)[layer].output.save()
        tracer.stop()
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden.float().cpu(), enc["input_ids"], mask.bool()


def long_enough(tokenizer, texts: Iterable[str], n_tokens: int) -> Iterator[tuple[int, str]]:
    """(index, text) of the texts with at least ``n_tokens`` tokens, special tokens not counted: the official
    ``stream_batches`` keeps only those, so that every document gives the same number of activations."""
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=n_tokens)["input_ids"]
        if len(ids) >= n_tokens:
            yield i, text


def iter_token_activations(
    model, texts: Iterable[str], layer: int, *, context_length: int = 128, batch_size: int = 16,
    max_tokens: int | None = None, progress: bool = True, desc: str = "activations", remote: bool | str = False,
    exact_context: bool = False,
) -> Iterator[ActivationBatch]:
    """Per-token activations of every real token (BOS and padding excluded), batch by batch.

    ``context_length`` counts the tokens of a text with its BOS; ``exact_context=True`` counts as the official
    code does (``stream_batches`` + ``extract_per_position``): ``context_length`` activations *after* BOS from
    every text, and texts shorter than that are skipped (their document indices stay unused).
    ``remote=True`` runs each batch's forward on NDIF (an API key is needed: ``docs/remote.md``).
    """
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id
    indexed = (long_enough(tokenizer, texts, context_length) if exact_context else enumerate(texts))
    length = context_length + (tokenizer.num_special_tokens_to_add() if exact_context else 0)
    seen = 0
    bar = tqdm(total=max_tokens, desc=desc, unit="tok", disable=not progress)
    for pairs in _batches(indexed, batch_size):
        index, batch = torch.tensor([i for i, _ in pairs]), [t for _, t in pairs]
        hidden, ids, mask = layer_output(model, batch, layer, length, remote=remote)
        keep = mask & (ids != bos) if bos is not None else mask
        rows, cols = keep.nonzero(as_tuple=True)
        positions = mask.cumsum(-1) - 1  # position within the text, whatever the padding side
        out = ActivationBatch(hidden[rows, cols], index[rows], positions[rows, cols], ids[rows, cols])
        if max_tokens is not None and seen + len(out) >= max_tokens:
            out = out[: max_tokens - seen]
        seen += len(out)
        bar.update(len(out))
        yield out
        if max_tokens is not None and seen >= max_tokens:
            break
    bar.close()
    if seen == 0:
        raise ValueError("no activations: the text stream was empty (or held only special tokens)")


def iter_final_activations(
    model, texts: Iterable[str], layer: int, *, context_length: int = 512, batch_size: int = 16,
    add_special_tokens: bool = True, progress: bool = True, desc: str = "activations", remote: bool | str = False,
) -> Iterator[ActivationBatch]:
    """The activation at the last real token of each text (one row per text), batch by batch.

    For chat-templated prompts pass ``add_special_tokens=False``: the template already holds BOS.
    """
    first_doc = 0
    texts = list(texts) if not isinstance(texts, list) else texts
    if not texts:
        raise ValueError("no activations: the text list was empty")
    for batch in tqdm(list(_batches(texts, batch_size)), desc=desc, disable=not progress):
        hidden, ids, mask = layer_output(model, batch, layer, context_length, add_special_tokens, remote)
        rows = torch.arange(len(batch))
        last = mask.shape[1] - 1 - mask.flip(-1).int().argmax(-1)  # index of the last real token
        yield ActivationBatch(hidden[rows, last], rows + first_doc, mask.sum(-1) - 1, ids[rows, last])
        first_doc += len(batch)


def token_activations(model, texts: Iterable[str], layer: int, **kwargs) -> ActivationBatch:
    """All per-token activations of ``texts`` in one batch (for small sets; use the iterator for streams).

    Takes the iterator's keywords (``context_length``, ``batch_size``, ``max_tokens``, ``remote``, ...).
    """
    return ActivationBatch.cat(list(iter_token_activations(model, texts, layer, **kwargs)))


def final_activations(model, texts: Iterable[str], layer: int, **kwargs) -> ActivationBatch:
    """Final-position activations of ``texts`` in one batch."""
    return ActivationBatch.cat(list(iter_final_activations(model, texts, layer, **kwargs)))


register_extractor(token_activations)  # Dictionary.assign_texts extracts with it (ep.method imports no model code)
