"""ep.build: one call from a model, texts and a layer to a dictionary with its provenance and readable contexts."""

import dataclasses

import numpy as np
import pytest
import torch

import ep


@pytest.mark.model
def test_build_records_its_config_and_shows_regions(gemma, tmp_path, monkeypatch):
    monkeypatch.setenv("EP_CACHE_DIR", str(tmp_path))
    model, info = gemma
    texts = list(ep.data.corpus(max_docs=30))
    d = ep.build(model, texts, 3, calibration_docs=10, max_tokens=600, context_length=32, progress=False)
    cfg = d.config
    assert cfg.layer == 3 and cfg.calibration_docs == 10 and cfg.max_tokens == 600 and cfg.percentile == 1.0
    assert cfg.data_source == ep.data.source() and len(cfg.model_fingerprint) == 16
    assert "model" not in d.meta and "layer" not in d.meta and d.calibration.meta == {}  # once, in the config
    assert int(d.counts.sum()) == 600
    card = d.region(int(d.counts.argmax()))._repr_html_()
    assert "<mark" in card  # the exemplar's token, highlighted, with no documents passed in
    # the same build from the cache gives the same calibration; d.calibration gives it back
    streamed = []
    again = ep.build(model, texts, 3, calibration_docs=10, max_tokens=600, context_length=32, progress=False,
                     on_activations=streamed.append)
    assert torch.equal(again.exemplars, d.exemplars)
    # on_activations saw exactly the streamed tokens: the texts after the calibration ones, up to max_tokens
    alone = ep.token_activations(model, texts[10:], 3, max_tokens=600, context_length=32, progress=False)
    assert torch.equal(ep.ActivationBatch.cat(streamed).acts, alone.acts)
    cal = d.calibration
    assert cal.threshold == d.threshold and cal.protocol == "documents" and cal.docs_per_batch == 128
    first = ep.token_activations(model, texts[:10], 3, context_length=32, progress=False)
    assert cal.n_tokens == len(first.acts)  # the first 10 texts, never the streamed ones
    d.save(tmp_path / "d.safetensors")
    loaded = ep.Dictionary.load(tmp_path / "d.safetensors")
    assert loaded.config == cfg and loaded.calibration.record() == cal.record()
    # new text, in one call: the dictionary's layer (3) and context length (32)
    new = ["The river bank was flooded.", "def f(x):\n    return x"]
    assigned = loaded.assign_texts(model, new)
    region, distance = d.assign(ep.token_activations(model, new, 3, context_length=32, progress=False).acts)
    assert np.array_equal(assigned.region, region) and np.array_equal(assigned.distance, distance)
    assert sorted(set(assigned.doc.tolist())) == [0, 1] and len(assigned.tokens) == len(region)
    assert "".join(t for t, _, _ in assigned.text(0)) == new[0]  # every token, in order, as text
    # a config reused: the same settings, another layer; overrides must name a setting
    other = ep.build(model, texts, 2, cfg, progress=False)
    assert other.config == dataclasses.replace(cfg, layer=2)


def test_fingerprint_tells_models_apart():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    assert ep.model.pipeline.model_fingerprint(a) != ep.model.pipeline.model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert ep.model.pipeline.model_fingerprint(a) == ep.model.pipeline.model_fingerprint(b)


def test_overrides_name_settings():
    config = ep.BuildConfig().replace(percentile=10, max_tokens=None)
    assert config.percentile == 10 and config.max_tokens is None and config.calibration_docs == 100
    for bad in ({"percentil": 10}, {"data_source": "x"}):  # a typo, and provenance (the build writes that)
        with pytest.raises(TypeError, match="not a BuildConfig setting.*the settings are percentile, calibration_docs"):
            ep.build(torch.nn.Linear(2, 2), ["a", "b", "c"], 0, **bad)


def test_too_few_calibration_texts():
    with pytest.raises(ValueError, match="calibration texts"):
        ep.build(torch.nn.Linear(2, 2), ["only one"], 0, calibration_docs=5)
