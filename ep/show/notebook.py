"""What every notebook calls once: ``setup()`` and ``save_results()``.

Keeping these here (not copied into each notebook) is what lets a notebook stay a story.
"""

from __future__ import annotations

import json
import platform
import random
from pathlib import Path

import numpy as np
import torch

from ..method.device import default_device, default_dtype


def setup(seed: int = 0) -> torch.device:
    """Seed everything, turn off autograd (we only read and edit activations), set the plot style."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_grad_enabled(False)
    sns.set_theme(context="notebook", style="whitegrid")
    plt.rcParams.update({"figure.figsize": (7, 3.5), "figure.dpi": 100})
    return default_device()


def machine() -> dict:
    """Where a number was measured: it belongs next to the number."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "model_dtype": str(default_dtype(default_device())).removeprefix("torch."),
    }


def save_results(results: dict, name: str, results_dir: str | Path = "results") -> Path:
    """Write a notebook's headline numbers to ``results_dir/name.json`` (with the machine) and return the path."""
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**results, "machine": machine()}, indent=2, default=float) + "\n")
    return path


def markdown(text: str) -> None:
    """Show Markdown text (a summary built by ``ep.show.summary``) as the cell's output."""
    from IPython.display import Markdown, display

    display(Markdown(text))
