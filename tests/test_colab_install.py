"""Simulate Colab's first cell: a fresh venv that already has a torch, ``google.colab`` present, the notebook's own
``%pip install`` line run by IPython against a wheel built from this checkout (instead of the git URL).

What it proves: the install cell's command resolves against an environment that already holds torch and the
other libraries without touching torch (same version, same files, nothing torch-like added to the venv); it
installs this package as a wheel (so packaging includes everything ``import ep`` needs, not just the source tree);
and the rest of the setup cell (``import ep``, ``ep.setup``) runs from that installed copy.
What it does not prove: that Colab's own torch/numpy versions satisfy our ranges (the "already present" set here is
this test environment's, made visible to the venv through a path entry), or that the git URL is reachable: pip runs
with --no-index, so nothing is downloaded. About a minute (wheel build, venv, pip, IPython).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "01_activations.ipynb"

RUN_CELL = r"""
import json, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab's runtime has imported
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
result = shell.run_cell(open(sys.argv[1]).read())
result.raise_error()
import ep, torch
print(json.dumps({"ep": ep.__file__, "torch": torch.__file__, "torch_version": torch.__version__,
                  "in_colab": shell.user_ns["IN_COLAB"]}))
"""


def setup_cell() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


@pytest.mark.slow
def test_colab_install_cell_keeps_torch_and_installs_ep(tmp_path):
    import torch

    cell = setup_cell()
    url = re.search(r'%pip install -q "ep-tutorial\[[\w,]+\] @ (git\+[^"]+)"', cell).group(1)

    # a wheel of this checkout, built from a copy (no build/ or egg-info left in the repo)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ep", src / "ep", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
                    src], check=True)
    wheel = next(wheels.glob("ep_tutorial-*.whl"))

    # a fresh venv where torch (and the rest) are already installed: this environment's, through a path entry
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", venv], check=False)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    present = sysconfig.get_paths()["purelib"]
    (site / "colab_preinstalled.pth").write_text(present + "\n")  # a plain path entry: its .pth files stay inert
    torch_files = {p: p.stat().st_mtime for p in Path(torch.__file__).parent.glob("*.py")}

    (tmp_path / "cell.py").write_text(cell.replace(url, wheel.as_uri()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg")
    out = subprocess.run([python, "-c", RUN_CELL, tmp_path / "cell.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    assert seen["in_colab"] is True  # the stub made the cell take its Colab branch
    assert Path(seen["ep"]).is_relative_to(site), seen["ep"]  # the installed wheel, not this checkout
    assert seen["torch"] == torch.__file__ and seen["torch_version"] == torch.__version__  # torch left alone
    assert {p: p.stat().st_mtime for p in torch_files} == torch_files
    assert not list(site.glob("torch*")) and not list(site.glob("nvidia*"))  # nothing torch-like added
