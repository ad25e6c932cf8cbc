"""Model loading without a model: checkpoint integrity, the conversion record, clear hub errors (all mocked)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ep.model import loading


def fake_checkpoint(folder, record=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3)}, folder / "model.safetensors")
    if record is not None:
        (folder / loading.RECORD).write_text(json.dumps(record))
    return folder


def test_checkpoint_problem_detects_truncation_exactly(tmp_path):
    folder = fake_checkpoint(tmp_path / "m")
    assert loading.checkpoint_problem(folder) is None
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 20, 4):
        weights.write_bytes(raw[:cut])
        assert "model.safetensors" in loading.checkpoint_problem(folder)
    weights.unlink()
    assert "no config.json or no *.safetensors" in loading.checkpoint_problem(folder)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EP_CACHE_DIR", str(tmp_path))
    converted = []

    def fake_convert(name, out):
        converted.append(name)
        fake_checkpoint(out, loading._conversion_record(name))

    monkeypatch.setattr(loading, "_convert", fake_convert)
    return tmp_path, converted


def test_embedded_checkpoint_is_rebuilt_when_truncated_or_from_another_transformers(cache):
    root, converted = cache
    name = "gemma-3-270m"
    out = loading._float_checkpoint(name)  # first use converts
    assert converted == [name] and loading.checkpoint_problem(out) is None
    assert json.loads((out / loading.RECORD).read_text())["transformers"] == loading._conversion_record(name)[
        "transformers"]
    loading._float_checkpoint(name)  # whole and same version: reused
    assert converted == [name]
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    loading._float_checkpoint(name)
    assert converted == [name, name] and loading.checkpoint_problem(out) is None
    (out / loading.RECORD).write_text(json.dumps({"transformers": "4.0.0"}))  # converted by another version
    loading._float_checkpoint(name)
    assert converted == [name, name, name]
    (out / loading.RECORD).unlink()  # a whole checkpoint from before the record was kept is used as it is
    loading._float_checkpoint(name)
    assert len(converted) == 3


def test_truncated_cached_sibling_names_the_file_and_the_command(cache):
    root, _ = cache
    folder = fake_checkpoint(root / "gemma-3-270m-it-lora")
    assert loading._cached_checkpoint("gemma-3-270m-it-lora") == folder
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RuntimeError) as err:
        loading._cached_checkpoint("gemma-3-270m-it-lora")
    assert str(weights) in str(err.value) and f"rm -rf {folder}" in str(err.value)


@pytest.mark.parametrize(
    "message, kind, words",
    [
        ("You are trying to access a gated repo. Make sure to have access to it.", PermissionError, "HF_TOKEN"),
        ("401 Client Error: Unauthorized for url", PermissionError, "licence"),
        ("We couldn't connect to 'https://huggingface.co' to load the files", ConnectionError, "internet"),
    ],
)
def test_hub_errors_say_what_to_do(cache, monkeypatch, message, kind, words):
    import transformers

    def fail(*args, **kwargs):
        raise OSError(message)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(kind, match=words):
        loading.load_model("google/gemma-2-2b", device="cpu")
