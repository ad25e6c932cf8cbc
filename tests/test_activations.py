import pytest
import torch

from ep import data
from ep.model import activations as A
from ep.model.loading import transformers_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris",
    "Exemplar partitioning builds a dictionary from observed activations, one region at a time.",
]


def hf_hidden(gemma, text: str, layer: int) -> torch.Tensor:
    """Reference: plain HF forward of one unpadded text, hidden_states[layer + 1], BOS dropped."""
    model, _ = gemma
    enc = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = transformers_model(model)(**enc, output_hidden_states=True)
    return out.hidden_states[layer + 1][0, 1:]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 reordering noise, relative to the tensor's scale (BOS-free norms reach ~1e4)."""
    return a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max()


# Not the last layer: HF applies the final norm to its last hidden state.
@pytest.mark.parametrize("layer", [0, 5, 16])
def test_token_activations_equal_hf_hidden_states(gemma, layer):
    model, _ = gemma
    batch = A.token_activations(model, TEXTS, layer, progress=False)
    for i, text in enumerate(TEXTS):
        ours = batch.acts[batch.doc == i]
        ref = hf_hidden(gemma, text, layer)
        assert ours.shape == ref.shape
        assert close(ours, ref), f"layer {layer}, text {i}"
        # and not the neighbouring layer's
        assert not close(ours, hf_hidden(gemma, text, layer + 1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_and_padding_side_do_not_matter(gemma, side):
    model, _ = gemma
    alone = [A.token_activations(model, [t], 9, progress=False).acts for t in TEXTS]
    old = model.tokenizer.padding_side
    model.tokenizer.padding_side = side
    try:
        batch = A.token_activations(model, TEXTS, 9, progress=False)
        final = A.final_activations(model, TEXTS, 9, progress=False)
    finally:
        model.tokenizer.padding_side = old
    for i, acts in enumerate(alone):
        assert close(batch.acts[batch.doc == i], acts)
        assert close(final.acts[i], acts[-1])
    assert final.pos.tolist() == [len(a) for a in alone]  # BOS at 0, so the last token sits at len


def test_provenance_and_no_bos(gemma):
    model, _ = gemma
    batch = A.token_activations(model, TEXTS, 3, progress=False)
    bos = model.tokenizer.bos_token_id
    assert (batch.token != bos).all()
    assert batch.pos.min() == 1  # position 0 is BOS
    for i, text in enumerate(TEXTS):
        ids = model.tokenizer(text)["input_ids"]
        rows = batch.doc == i
        assert batch.token[rows].tolist() == ids[1:]
        assert batch.pos[rows].tolist() == list(range(1, len(ids)))
    assert batch.acts.dtype == torch.float32


def test_stream_is_bounded_and_truncated(gemma):
    model, _ = gemma
    stream = A.iter_token_activations(model, data.corpus(max_docs=40), 2, context_length=32, batch_size=8,
                                      max_tokens=500, progress=False)
    batches = list(stream)
    assert sum(len(b) for b in batches) == 500
    assert all(len(b) <= 8 * 31 for b in batches)
    assert max(int(b.pos.max()) for b in batches) <= 31


def test_bad_input(gemma):
    model, _ = gemma
    with pytest.raises(ValueError, match="out of range"):
        A.token_activations(model, TEXTS, 18, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        A.token_activations(model, TEXTS, -1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        A.token_activations(model, [], 3, progress=False)
    with pytest.raises(ValueError, match="empty"):
        A.final_activations(model, [], 3, progress=False)
    with pytest.raises(TypeError, match="document 1"):
        A.token_activations(model, ["fine", 42], 3, progress=False)
