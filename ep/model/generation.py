"""Greedy generation through nnsight: the one generation loop of the package.

Every demonstration that makes a model write (refusal labels in notebook 04, steering in 08, the
few-shot answers and before/after replies of the LoRA sibling in 05) calls :func:`greedy`:

- prompts are sorted by token length (less padding), left-padded (the new token follows the last real
  one) and run in batches of at most ``batch_size``, as even as possible; results come back in the
  prompts' order. With pad ≠ eos a prompt's completion does not depend on its batch (tested);
- an ``edit`` (:class:`Edit`, e.g. ``ep.model.interventions.Ablation``) replaces chosen decoder-block
  outputs at every position and every generation step;
- ``record_layers`` returns, from the same pass, the block outputs (after the edit) at each prompt's
  last token, so labelling prompts and reading their activations costs one forward, not two;
- ``remote=True`` runs the same code on NDIF (nnsight's remote execution, see ``docs/remote.md``): the
  inputs stay on the CPU and everything inside the trace is traced code, so nothing needs local weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import decoder_layers
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

    def texts(self, tokenizer) -> list[str]:
        """The completions decoded, special tokens (padding, stop tokens) dropped."""
        return tokenizer.batch_decode(self.tokens, skip_special_tokens=True)


def _greedy_batch(model, prompts: list[str], max_new_tokens: int, edit: Edit | None, record: Sequence[int],
                  stop: list[int] | None, add_special_tokens: bool, remote: bool | str
                  ) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
    tok = model.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special_tokens)
    inputs = inputs_on_device(model, {k: enc[k] for k in ("input_ids", "attention_mask")}, remote)
    blocks = decoder_layers(model)
    edit_layers = set(edit.layers) if edit is not None else set()
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
    if stop is not None:
        kwargs["eos_token_id"] = stop
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
                            saved[layer] = hidden[:, -1].save()  # last prompt token (left padding)
        with tracer.invoke():  # a separate invoke: runs after the open loop above has ended
            ids = tracer.result.save()
    new = ids[:, enc["input_ids"].shape[1]:].cpu().tolist()
    return new, {layer: value.float().cpu() for layer, value in saved.items()}


@torch.no_grad()
def greedy(model, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 32,
           edit: Edit | None = None, record_layers: Sequence[int] = (), stop: Sequence[int] | None = None,
           add_special_tokens: bool = False, remote: bool | str = False, progress: bool = True,
           desc: str = "generate") -> Completions:
    """Greedy continuations of ``prompts`` (nnsight-wrapped ``model``), batched, optionally edited.

    ``stop``: token ids that end a completion (default: the model's own end-of-sequence ids).
    ``add_special_tokens=False`` suits chat-templated prompts (the template holds BOS); plain text
    wants True. ``remote=True`` runs on NDIF (needs an API key, see ``docs/remote.md``); ``remote="local"``
    is nnsight's serverless dry run of that path (the request is serialised and run here).

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
    with warnings.catch_warnings():
        # the open step loop ends by design when generation stops; nnsight warns about it every time
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        for s in tqdm(range(0, len(prompts), size), desc=desc, disable=not progress):
            idx = order[s:s + size]
            new, saved = _greedy_batch(model, [prompts[i] for i in idx], max_new_tokens, edit, record_layers, stop,
                                       add_special_tokens, remote)
            for i, row in zip(idx, new):
                tokens[i] = row
            for layer in record_layers:
                acts[layer].append(saved[layer])
    inverse = torch.as_tensor(np.argsort(order))
    final = {layer: torch.cat(parts)[inverse] for layer, parts in acts.items()}
    return Completions(tokens, final, torch.tensor([i[-1] for i in ids]), torch.tensor(lengths))
