"""Tests for ep.model.lens on the embedded Gemma 3 270M: the lens of the last block's output is the model's own
prediction, scale does not matter, and every region gets its tokens."""

import pytest
import torch

from ep.model.activations import decoder_layers
from ep.model.lens import final_norm_and_unembedding, logit_lens, region_lens
from ep.model.loading import transformers_model

pytestmark = pytest.mark.model


def test_lens_of_the_last_block_is_the_models_prediction(gemma):
    model, _ = gemma
    hf = transformers_model(model)
    ids = model.tokenizer(["The capital of France is Paris, and the capital of Italy is"], return_tensors="pt")
    captured = {}
    keep = lambda module, inputs, output: captured.setdefault("h", output[0] if isinstance(output, tuple) else output)
    hook = decoder_layers(hf)[-1].register_forward_hook(keep)
    try:
        logits = hf(**ids).logits[0]  # [pos, vocab]
    finally:
        hook.remove()
    lens = logit_lens(model, captured["h"][0], k=3)  # [pos] lists of 3 tokens
    want = [[model.tokenizer.decode([t]) for t in row] for row in logits.topk(3, dim=-1).indices.tolist()]
    assert lens == want


def test_scale_does_not_matter_and_shapes(gemma):
    model, info = gemma
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(5, info.d_model, generator=g), dim=-1)
    assert logit_lens(model, v, k=5) == logit_lens(model, 37.0 * v, k=5)
    norm, unembed = final_norm_and_unembedding(model)
    assert unembed.weight.shape[1] == info.d_model


def test_region_lens(gemma):
    from types import SimpleNamespace

    model, info = gemma
    g = torch.Generator().manual_seed(1)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, info.d_model, generator=g), dim=-1)
    d = SimpleNamespace(exemplars=unit(4), mean_directions=unit(4), centre=10 * unit(1)[0])
    lens = region_lens(model, d, k=4, regions=[0, 2])
    assert set(lens) == {0, 2} and all(len(v["exemplar"]) == len(v["mean"]) == 4 for v in lens.values())
    assert lens[0]["exemplar"] == logit_lens(model, d.exemplars[:1], k=4)[0]
    shifted = region_lens(model, d, k=4, regions=[0], centre_scale=1.0)
    assert shifted[0]["exemplar"] == logit_lens(model, (d.centre + d.exemplars[0])[None], k=4)[0]
