"""Greedy generation through nnsight: the one generation loop of the package.

Every demonstration that makes a model write (refusal labels in notebook 04, steering in 08, the
few-shot answers and before/after replies of the LoRA sibling in 05) calls :func:`greedy`:

- prompts are sorted by token length (less padding), left-padded (the new token follows the last real
  one) and run in batches of at most ``batch_size``, as even as possible; results come back in the
  prompts' order. With pad ≠ eos a prompt's completion does not depend on its batch (tested);
- an ``edit`` (:class:`Edit`, e.g. ``ep.model.interventions.Ablation``) replaces chosen decoder-block
  outputs at every position and every generation step;
- ``record_layers`` returns, from the same pass, the block outputs (after the edit) at each prompt's
  last token (and with ``record_prompts`` at every prompt token), so labelling prompts and reading their
  activations costs one forward, not two;
- ``shared`` (:class:`SharedPrompts`) runs many edits of one prompt set at the cost of the blocks they touch:
  an edit at block L and after leaves blocks 0..L-1 of every prompt as they are, so their keys and values
  are computed once and reused (the tokens are the same as without, tested);
- ``remote=True`` runs the same code on NDIF (nnsight's remote execution, see ``docs/remote.md``): the
  inputs stay on the CPU and everything inside the trace is traced code, so nothing needs local weights.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..method.batch import ActivationBatch
from .activations import decoder_layers
from .loading import transformers_model
from .remote import check_remote, inputs_on_device


class Edit(Protocol):
    """What :func:`greedy` needs from an intervention (e.g. ``ep.model.interventions.Ablation``).

    ``layers``: the decoder blocks it edits. ``edit(hidden, layer)`` maps a block's output
    [batch, pos, d] to its replacement; it is called at every generation step (the whole prompt at
    step 0, the one new position at each later step), so every position is edited.
    """

    layers: tuple[int, ...]

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor: ...


@dataclass
class Completions:
    """What one :func:`greedy` call produced, in the order of its prompts."""

    tokens: list[list[int]]  # new token ids of each prompt (after a stop token: padding)
    final_acts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [N, d] float32 (if recorded)
    last_token: torch.Tensor | None = None  # [N] int64 id of each prompt's last token
    length: torch.Tensor | None = None  # [N] int64 tokens in each prompt
    prompt_acts: dict[int, ActivationBatch] = field(default_factory=dict)  # layer -> every prompt token's row

    def texts(self, tokenizer) -> list[str]:
        """The completions decoded, special tokens (padding, stop tokens) dropped."""
        return tokenizer.batch_decode(self.tokens, skip_special_tokens=True)

    def batch(self, layer: int) -> ActivationBatch:
        """The recorded final-position activations at ``layer`` with provenance (prompt i, its last position, its
        last token), for ``ep.build_dictionary``."""
        if layer not in self.final_acts:
            raise KeyError(f"layer {layer} was not recorded; recorded: {sorted(self.final_acts)}")
        return ActivationBatch(self.final_acts[layer], torch.arange(len(self.length)), self.length - 1,
                               self.last_token)


def _greedy_batch(model, prompts: list[str], max_new_tokens: int, edit: Edit | None, record: Sequence[int],
                  stop: list[int] | None, add_special_tokens: bool, remote: bool | str,
                  prefix: _Prefix | None = None, whole: bool = False):
    """One left-padded batch → (new token ids per prompt, {layer: recorded block output}, the batch's encoding).
    The recorded output is the last prompt position [b, d], or with ``whole`` every position [b, T, d]."""
    tok = model.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special_tokens)
    inputs = inputs_on_device(model, {k: enc[k] for k in ("input_ids", "attention_mask")}, remote)
    blocks = decoder_layers(model)
    edit_layers = set(edit.layers) if edit is not None else set()
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
    if stop is not None:
        kwargs["eos_token_id"] = stop
    if prefix is not None:  # all but the last prompt token already run: generation starts from their cache
        if not torch.equal(prefix.input_ids, enc["input_ids"]):
            raise ValueError("these prompts are not the ones the SharedPrompts were made for")
        kwargs["past_key_values"] = prefix.edited_cache(model, inputs, edit)
    saved: dict[int, torch.Tensor] = {}  # made outside the trace; holds .save()d values
    # An open loop (tracer.all()) runs every step and ends when generation does; recording alone needs step 0.
    # No comment-only lines inside the block: nnsight's remote serialisation drops them and then cannot find
    # the block's lines again (WithBlockNotFoundError); tests/test_remote.py runs this block serialised.
    with model.generate(remote=remote, **kwargs) as tracer:
        with tracer.invoke(inputs):
            if edit_layers or record:
                for step in tracer.all() if edit_layers else tracer.iter[0]:
                    for layer in sorted(edit_layers | (set(record) if step == 0 else set())):  # execution order
                        hidden = blocks[layer].output
                        if layer in edit_layers:
                            hidden = edit(hidden, layer)
                            blocks[layer].output = hidden
                        if step == 0 and layer in record:
                            saved[layer] = (hidden if whole else hidden[:, -1]).save()  # left padding
        with tracer.invoke():  # a separate invoke: runs after the open loop above has ended
            ids = tracer.result.save()
    new = ids[:, enc["input_ids"].shape[1]:].cpu().tolist()
    return new, {layer: value.float().cpu() for layer, value in saved.items()}, enc


@torch.no_grad()
def greedy(model, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 32,
           edit: Edit | None = None, record_layers: Sequence[int] = (), stop: Sequence[int] | None = None,
           add_special_tokens: bool = False, remote: bool | str = False, progress: bool = True,
           desc: str = "generate", shared: SharedPrompts | None = None, record_prompts: bool = False) -> Completions:
    """Greedy continuations of ``prompts`` (nnsight-wrapped ``model``), batched, optionally edited.

    ``stop``: token ids that end a completion (default: the model's own end-of-sequence ids).
    ``record_prompts``: ``prompt_acts`` also holds each recorded layer's output at every prompt token
    (``doc`` the prompt's index, ``pos`` the position in it), read from the same forward that starts generation.
    ``add_special_tokens=False`` suits chat-templated prompts (the template holds BOS); plain text
    wants True. ``shared``: these prompts' first blocks, run once (:class:`SharedPrompts`). ``remote=True``
    runs on NDIF (needs an API key, see ``docs/remote.md``); ``remote="local"`` is nnsight's serverless dry run
    of that path (the request is serialised and run here).

    >>> out = greedy(model, ["One, two, three,"], max_new_tokens=4, add_special_tokens=True)  # doctest: +SKIP
    >>> out.texts(model.tokenizer)  # doctest: +SKIP
    [' four, five,']
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    check_remote(remote)
    tok = model.tokenizer
    if tok.pad_token_id == tok.eos_token_id:
        warnings.warn("pad = eos: a padded prompt may be read as finished; give the tokenizer its own pad token",
                      stacklevel=2)
    ids = tok(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    lengths = [len(i) for i in ids]
    order = np.argsort(lengths, kind="stable")
    tokens: list[list[int] | None] = [None] * len(prompts)
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in record_layers}
    n_batches = -(-len(prompts) // batch_size)
    size = -(-len(prompts) // n_batches)  # even batches: 84 prompts at batch_size 64 run as 42 + 42
    stop = None if stop is None else [int(i) for i in stop]
    if shared is not None:
        shared.check(prompts, size, order, edit, remote)
        if record_prompts:
            raise ValueError("record_prompts needs the whole prompt run: it cannot be combined with shared")
    every: dict[int, list[ActivationBatch]] = {layer: [] for layer in record_layers if record_prompts}
    with warnings.catch_warnings():
        # the open step loop ends by design when generation stops; nnsight warns about it every time
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        for s in tqdm(range(0, len(prompts), size), desc=desc, disable=not progress):
            idx = order[s:s + size]
            new, saved, enc = _greedy_batch(model, [prompts[i] for i in idx], max_new_tokens, edit, record_layers,
                                            stop, add_special_tokens, remote, shared and shared.batches[s // size],
                                            whole=record_prompts)
            for i, row in zip(idx, new):
                tokens[i] = row
            for layer in record_layers:
                if record_prompts:
                    every[layer].append(_real_tokens(saved[layer], enc, torch.as_tensor(idx)))
                    saved[layer] = saved[layer][:, -1]
                acts[layer].append(saved[layer])
    inverse = torch.as_tensor(np.argsort(order))
    final = {layer: torch.cat(parts)[inverse] for layer, parts in acts.items()}
    by_prompt = {layer: _in_prompt_order(ActivationBatch.cat(parts)) for layer, parts in every.items()}
    return Completions(tokens, final, torch.tensor([i[-1] for i in ids]), torch.tensor(lengths), by_prompt)


def _real_tokens(hidden: torch.Tensor, enc, prompt_index: torch.Tensor) -> ActivationBatch:
    """hidden [b, T, d] of a left-padded batch → its real (unpadded) tokens' rows."""
    rows, cols = enc["attention_mask"].bool().nonzero(as_tuple=True)
    positions = _positions(enc["attention_mask"])  # as generate counts them: the real tokens from 0
    return ActivationBatch(hidden[rows, cols], prompt_index[rows], positions[rows, cols], enc["input_ids"][rows, cols])


def _in_prompt_order(batch: ActivationBatch) -> ActivationBatch:
    """Rows sorted by prompt, then position (the batches ran in order of length)."""
    return batch[torch.as_tensor(np.lexsort((batch.pos.numpy(), batch.doc.numpy())))]


# -----------------------------------------------------------------------------
# many edits of one prompt set: the blocks below the edit run once


@dataclass
class _Prefix:
    """One batch's prompts (all but their last token) run through blocks 0..below-1, unedited."""

    input_ids: torch.Tensor  # [b, T] the batch as tokenized (left-padded)
    below: int
    hidden: torch.Tensor  # [b, T-1, d] the output of block below-1
    cache: object  # transformers' DynamicCache over the first T-1 positions, all blocks (0..below-1 are reused)

    def edited_cache(self, model, inputs: dict[str, torch.Tensor], edit: Edit | None):
        """The cache of the first T-1 positions under ``edit``: blocks 0..below-1 copied, the rest run here."""
        from transformers import DynamicCache

        hf = transformers_model(model)
        cache = DynamicCache(config=hf.config)
        _prefill(hf, inputs, cache, skip=(self.below, self.hidden), edit=edit)
        for i in range(self.below):  # a shallow copy: decoding appends new tensors, never writes into these
            cache.layers[i] = copy.copy(self.cache.layers[i])
        return cache


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them (real tokens count from 0)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


@contextmanager
def _hooked(blocks, skip: tuple[int, torch.Tensor] | None, edit: Edit | None) -> Iterator[None]:
    """Blocks below ``skip[0]`` not run (the last of them returns ``skip[1]``); ``edit`` applied to its blocks."""
    handles, replaced = [], []  # (block, its own instance forward: nnsight wraps one there)
    try:
        if skip is not None:
            below, hidden = skip
            for i in range(below):
                replaced.append((blocks[i], vars(blocks[i]).get("forward")))
                blocks[i].forward = (lambda h, *a, **k: h) if i < below - 1 else (lambda h, *a, **k: hidden)
        for layer in edit.layers if edit is not None else ():
            handles.append(blocks[layer].register_forward_hook(
                lambda module, args, out, layer=layer: edit(out, layer)))
        yield
    finally:
        for block, forward in replaced:
            if forward is None:
                del block.forward
            else:
                block.forward = forward
        for h in handles:
            h.remove()


def _prefill(hf, inputs: dict[str, torch.Tensor], cache, skip=None, edit: Edit | None = None,
             capture: int | None = None) -> torch.Tensor | None:
    """Run all but the last token of each prompt into ``cache``; return block ``capture``'s output if asked."""
    ids, mask = inputs["input_ids"][:, :-1], inputs["attention_mask"][:, :-1]
    blocks, captured = decoder_layers(hf), []
    hook = None if capture is None else blocks[capture].register_forward_hook(
        lambda module, args, out: captured.append(out))
    try:
        with _hooked(blocks, skip, edit):
            hf(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), past_key_values=cache,
               use_cache=True, logits_to_keep=1)
    finally:
        if hook is not None:
            hook.remove()
    return captured[0] if captured else None


class SharedPrompts:
    """One prompt set made ready for many edits at block ``below`` or later (``greedy(..., shared=...)``).

    An edit at block L changes nothing in blocks 0..L-1: their keys and values over a prompt, and the output of
    block L-1, are the same for every edit. They are computed once here, for all but each prompt's last token;
    an edited run then computes only blocks L.. over the prompt and generates from the joined cache, where it
    would otherwise run the whole model over every prompt again. The prompts are batched exactly as
    :func:`greedy` batches them (sorted by length, even batches), so the same ``batch_size`` must be passed.
    """

    def __init__(self, model, prompts: Sequence[str], below: int, *, batch_size: int = 32,
                 add_special_tokens: bool = False):
        from transformers import DynamicCache

        self.prompts, self.below, self.batch_size = list(prompts), int(below), batch_size
        n_blocks = len(decoder_layers(model))
        if not 0 < self.below < n_blocks:
            raise ValueError(f"below must name a block after the first, in 1..{n_blocks - 1}; got {below}")
        tok, hf = model.tokenizer, transformers_model(model)
        ids = tok(self.prompts, add_special_tokens=add_special_tokens)["input_ids"]
        if min(len(i) for i in ids) < 2:
            raise ValueError("every prompt needs at least two tokens")
        self.order = np.argsort([len(i) for i in ids], kind="stable")
        n_batches = -(-len(ids) // batch_size)
        self.size = -(-len(ids) // n_batches)
        self.batches = []
        with torch.no_grad():
            for s in range(0, len(ids), self.size):
                enc = tok([self.prompts[i] for i in self.order[s:s + self.size]], return_tensors="pt", padding=True,
                          padding_side="left", add_special_tokens=add_special_tokens)
                inputs = inputs_on_device(model, {k: enc[k] for k in ("input_ids", "attention_mask")}, False)
                cache = DynamicCache(config=hf.config)
                hidden = _prefill(hf, inputs, cache, capture=self.below - 1)
                self.batches.append(_Prefix(enc["input_ids"], self.below, hidden, cache))

    def check(self, prompts: list[str], size: int, order: np.ndarray, edit: Edit | None, remote) -> None:
        if remote:
            raise ValueError("shared prompts run locally: remote runs cannot reuse them")
        if prompts != self.prompts or size != self.size or not np.array_equal(order, self.order):
            raise ValueError("greedy(shared=...) needs the prompts and batch_size the SharedPrompts were made with")
        if edit is not None and min(edit.layers) < self.below:
            raise ValueError(f"the edit touches block {min(edit.layers)}, below the shared blocks 0..{self.below - 1}")
