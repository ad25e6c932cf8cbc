"""ep: Exemplar Partitioning, the helper package behind the tutorial notebooks.

Four layers, bottom to top; a module imports only from its own layer or the ones below
(``tests/test_layers.py`` fails on an upward import):

1. ``ep.method`` (leader clustering, calibration, the ``Dictionary``, the builder, metrics) and
   ``ep.data`` (corpora and prompt sets by name): plain arrays and files, no model code;
2. ``ep.show``: displays and plots of what it is given;
3. ``ep.model``: loading a model by name, chat formats, activation extraction (nnsight),
   interventions, and ``ep.build``: one call from a model, texts and a layer to a dictionary;
4. ``ep.studies``: one module per demonstration (ood, refusal, finetune, matching, sae, compare,
   probes, axbench).

The names below are the package's public surface: ``import ep`` and use them as ``ep.NAME``.
``ep.exercises`` (the notebooks' checked exercises) sits above all four layers and loads on first use.
"""

from . import data
from ._version import __version__
from .method import published
from .method.batch import ActivationBatch
from .method.builder import DictionaryBuilder, build_dictionary
from .method.calibration import (
    Calibration,
    cached_calibration,
    calibrate,
    percentile_threshold,
    spherical_centre,
    to_directions,
)
from .method.config import BuildConfig
from .method.device import warm_vml
from .method.dictionary import Dictionary, DictionaryFormatError
from .method.leader import LeaderClustering, leader_cluster, leader_cluster_reference
from .model.activations import (
    final_activations,
    iter_final_activations,
    iter_token_activations,
    token_activations,
)
from .model.loading import load_model
from .model.pipeline import build
from .show.claims import Claims
from .show.notebook import save_results, setup

warm_vml()  # before any multi-threaded op: see its docstring (a torch/MKL race that changed activations)


def __getattr__(name: str):
    """``ep.exercises`` loads on first use: it imports every layer, which ``import ep`` need not."""
    if name == "exercises":
        import importlib

        return importlib.import_module(".exercises", __name__)
    raise AttributeError(f"module 'ep' has no attribute {name!r}")


__all__ = [
    "ActivationBatch",
    "BuildConfig",
    "Calibration",
    "Claims",
    "Dictionary",
    "DictionaryBuilder",
    "DictionaryFormatError",
    "LeaderClustering",
    "__version__",
    "build",
    "build_dictionary",
    "cached_calibration",
    "calibrate",
    "data",
    "exercises",
    "final_activations",
    "iter_final_activations",
    "iter_token_activations",
    "leader_cluster",
    "leader_cluster_reference",
    "load_model",
    "percentile_threshold",
    "published",
    "save_results",
    "setup",
    "spherical_centre",
    "to_directions",
    "token_activations",
]
