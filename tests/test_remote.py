"""The remote (NDIF) path, tested without the service: the flag reaches nnsight, nothing local-only runs
before the request, a missing API key gives one clear error, and nnsight's serverless dry run
(``remote="local"``: the request serialised and run here) gives the local numbers."""

import pytest
import torch

import ep
from ep.model import activations as A
from ep.model import generation as G
from ep.model import remote as R


@pytest.fixture
def no_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


@pytest.fixture
def key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "test-key")


class _Stop(Exception):
    pass


class _Spy:
    """Wraps a loaded model: records the keywords of trace/generate and stops there (no service to call)."""

    def __init__(self, model):
        self._model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    @property
    def device(self):  # a remote model's local copy has weights on "meta": inputs must not be moved there
        raise AssertionError("the remote path asked for the model's device")

    def _record(self, kind, args, kwargs):
        self.calls.append((kind, kwargs))
        for value in [*args, *kwargs.values()]:
            for t in (value.values() if isinstance(value, dict) else [value]):
                assert not isinstance(t, torch.Tensor) or t.device.type == "cpu"
        raise _Stop

    def trace(self, *args, **kwargs):
        self._record("trace", args, kwargs)

    def generate(self, *args, **kwargs):
        self._record("generate", args, kwargs)


@pytest.mark.model
def test_the_flag_reaches_trace_and_generate_with_inputs_left_on_the_cpu(gemma, key):
    spy = _Spy(gemma[0])
    with pytest.raises(_Stop):
        ep.token_activations(spy, ["One, two"], 3, remote=True, progress=False)
    with pytest.raises(_Stop):
        ep.final_activations(spy, ["One, two"], 3, remote=True, progress=False)
    with pytest.raises(_Stop):
        G.greedy(spy, ["One, two"], max_new_tokens=2, remote=True, progress=False)
    assert [(kind, kw["remote"]) for kind, kw in spy.calls] == [("trace", True), ("trace", True), ("generate", True)]


def test_no_api_key_is_one_clear_error_before_anything_runs(no_key):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the key was checked")

    for call in (lambda: A.layer_output(_config_only(), ["x"], 0, remote=True),
                 lambda: G.greedy(Untouchable(), ["x"], remote=True)):
        with pytest.raises(PermissionError, match="NDIF_API_KEY"):
            call()
    R.check_remote(False)
    R.check_remote("local")  # the dry run needs no key


def test_load_model_remote_refuses_local_models_and_needs_a_key(no_key):
    with pytest.raises(ValueError, match="local model"):
        ep.load_model("gemma-3-270m", remote=True)
    with pytest.raises(PermissionError, match="NDIF_API_KEY"):
        ep.load_model("google/gemma-2-2b", remote=True)


def _config_only():
    class Config:
        def get_text_config(self):
            return self

        num_hidden_layers = 2

    class Model:
        config = Config()

        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the key was checked")

    return Model()


@pytest.mark.model
def test_extraction_through_the_serialised_remote_path_equals_local(gemma):
    model, _ = gemma
    texts = ["The capital of France is", "One, two, three,"]
    local = ep.token_activations(model, texts, 5, progress=False)
    dry = ep.token_activations(model, texts, 5, progress=False, remote="local")
    assert torch.equal(local.acts, dry.acts) and torch.equal(local.token, dry.token)


@pytest.mark.model
def test_edited_generation_through_the_serialised_remote_path_equals_local(gemma):
    from ep.model.interventions import Ablation

    model, _ = gemma
    texts = ["The capital of France is", "One, two, three,"]
    torch.manual_seed(0)
    for edit in (None, Ablation(torch.randn(640), (6,), torch.randn(640))):
        kwargs = dict(max_new_tokens=4, edit=edit, record_layers=(3,), add_special_tokens=True, progress=False)
        local, dry = G.greedy(model, texts, **kwargs), G.greedy(model, texts, remote="local", **kwargs)
        assert local.tokens == dry.tokens and torch.equal(local.final_acts[3], dry.final_acts[3])
