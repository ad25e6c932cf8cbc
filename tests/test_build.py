"""ep.build: one call from a model, texts and a layer to a dictionary with its provenance and readable contexts."""

import pytest
import torch

import ep


@pytest.mark.model
def test_build_records_its_config_and_shows_regions(gemma, tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CACHE_DIR", str(tmp_path))
    model, info = gemma
    texts = list(ep.data.corpus(max_docs=30))
    d = ep.build(model, texts, 3, calibration_docs=10, max_tokens=600, context_length=32, progress=False)
    cfg = d.meta["config"]
    assert cfg["layer"] == 3 and cfg["calibration_docs"] == 10 and cfg["max_tokens"] == 600
    assert cfg["data_source"] == ep.data.source() and len(cfg["model_fingerprint"]) == 16
    assert int(d.counts.sum()) == 600
    card = d.region(int(d.counts.argmax()))._repr_html_()
    assert "<mark" in card  # the exemplar's token, highlighted, with no documents passed in
    # the same build from the cache gives the same calibration; Calibration.of gives it back
    streamed = []
    again = ep.build(model, texts, 3, calibration_docs=10, max_tokens=600, context_length=32, progress=False,
                     on_activations=streamed.append)
    assert torch.equal(again.exemplars, d.exemplars)
    # on_activations saw exactly the streamed tokens: the texts after the calibration ones, up to max_tokens
    alone = ep.token_activations(model, texts[10:], 3, max_tokens=600, context_length=32, progress=False)
    assert torch.equal(ep.ActivationBatch.cat(streamed).acts, alone.acts)
    cal = ep.Calibration.of(d)
    assert cal.threshold == d.threshold and cal.n_tokens == d.meta["calibration_tokens"]
    # the calibration never sees the streamed texts: its documents are the first 10
    d.save(tmp_path / "d.safetensors")
    assert ep.Dictionary.load(tmp_path / "d.safetensors").meta["config"] == cfg


def test_fingerprint_tells_models_apart():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    assert ep.model.pipeline.model_fingerprint(a) != ep.model.pipeline.model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert ep.model.pipeline.model_fingerprint(a) == ep.model.pipeline.model_fingerprint(b)


def test_too_few_calibration_texts():
    with pytest.raises(ValueError, match="calibration texts"):
        ep.build(torch.nn.Linear(2, 2), ["only one"], 0, calibration_docs=5)
