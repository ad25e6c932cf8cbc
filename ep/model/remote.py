"""Remote execution on NDIF (nnsight's ``remote=True``): the checks shared by extraction, generation, ablation.

A model too large for the user's machine can run on the National Deep Inference Fabric: the client holds
a weightless (meta) copy of the model and its tokenizer, traces the same code as a local run, and ships
it. Two things differ from a local run, and both live here so every entry point treats them alike:

- the service needs an API key (``NDIF_API_KEY``, or ``nnsight.CONFIG.set_default_api_key``): without one,
  :func:`check_remote` stops before anything is sent, with one message that says what to do;
- the inputs stay on the CPU (:func:`inputs_on_device`): the local copy has no device to move them to.

``remote="local"`` is nnsight's serverless dry run: the request is serialised and deserialised as for
the service, then run in this process. The tests use it to check that the remote path holds no
local-only construct. Set-up: ``docs/remote.md``.
"""

from __future__ import annotations

import torch

KEY_HELP = ("remote=True runs on NDIF and needs an API key: get one at https://login.ndif.us, then set the "
            "environment variable NDIF_API_KEY (in Colab: Secrets -> NDIF_API_KEY) or run once "
            "`from nnsight import CONFIG; CONFIG.set_default_api_key('YOUR_KEY')`. See docs/remote.md")


def api_key() -> str | None:
    """The NDIF API key nnsight will send (from ``NDIF_API_KEY``, a Colab secret or nnsight's config file)."""
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def check_remote(remote: bool | str) -> None:
    """Raise one clear error when ``remote=True`` cannot work here (no API key); a no-op otherwise."""
    if remote and remote != "local" and api_key() is None:
        raise PermissionError(KEY_HELP)


def inputs_on_device(model, inputs: dict[str, torch.Tensor], remote: bool | str) -> dict[str, torch.Tensor]:
    """The model's inputs on its device for a local run; left on the CPU for a remote one (the server places them)."""
    if remote:
        return inputs
    device = model.device  # the Envoy's public device (of the first parameter)
    return {k: v.to(device) for k, v in inputs.items()}
