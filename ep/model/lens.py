"""
The logit lens of a region: the tokens its direction promotes when read straight out through the model's final
norm and unembedding, a label that costs one matrix product and no API key.

For region k we read two vectors: its exemplar (one observed token) and its mean-member direction (the
normalised sum of its members' directions, steadier for large regions). Both are centred unit directions
(the dictionary subtracted its centre and normalised). We feed the direction itself, as the official
``scripts/exp_resolution_paths.py::_logit_lens`` does (``ln_final(exemplar) @ W_U``, no centre added):

- the scale does not matter: the final norm (RMSNorm for Gemma and Qwen) divides by the vector's RMS, so
  any positive multiple of a direction gives the same logits (up to the norm's epsilon);
- the centre is left out on purpose: it is the mean activation, shared by every region, so adding it back
  moves every region's tokens toward the same ones (the tokens the average context predicts) and hides
  what tells regions apart. Pass ``centre_scale`` to read ``centre + centre_scale · direction`` instead.

Gemma's final logit soft-capping is monotone, so it cannot change the top tokens; we leave it out.
"""

from __future__ import annotations

import torch

from .loading import transformers_model


def final_norm_and_unembedding(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(final norm, unembedding) modules of an nnsight-wrapped (or plain) transformers causal LM."""
    hf = transformers_model(model) if hasattr(model, "pipeline") else model
    base = getattr(hf, "model", None)
    for candidate in (base, getattr(base, "language_model", None)):
        if candidate is not None and hasattr(candidate, "norm"):
            return candidate.norm, hf.get_output_embeddings()
    raise ValueError(f"cannot find the final norm of {type(hf).__name__}")


@torch.no_grad()
def logit_lens(model, vectors: torch.Tensor, k: int = 8, batch_size: int = 256) -> list[list[str]]:
    """vectors [N, d] (residual-stream space) -> per row, the k tokens with the highest logits, decoded."""
    norm, unembed = final_norm_and_unembedding(model)
    weight = unembed.weight
    top = []
    for s in range(0, len(vectors), batch_size):
        h = vectors[s:s + batch_size].to(device=weight.device, dtype=weight.dtype)  # [b, d]
        logits = unembed(norm(h)).float()  # [b, vocab]
        top += logits.topk(k, dim=-1).indices.tolist()
    decode = model.tokenizer.decode
    return [[decode([t]) for t in row] for row in top]


def region_lens(model, dictionary, k: int = 8, regions=None, centre_scale: float | None = None
                ) -> dict[int, dict[str, list[str]]]:
    """{region: {"exemplar": top tokens, "mean": top tokens}}: the logit lens of each region's exemplar and
    mean-member direction (see the module docstring for why no centre is added by default)."""
    ids = list(range(len(dictionary))) if regions is None else [int(r) for r in regions]
    read = lambda v: v if centre_scale is None else dictionary.centre + centre_scale * v
    exemplar = logit_lens(model, read(dictionary.exemplars[ids]), k)
    mean = logit_lens(model, read(dictionary.mean_directions[ids]), k)
    return {r: {"exemplar": e, "mean": m} for r, e, m in zip(ids, exemplar, mean)}
