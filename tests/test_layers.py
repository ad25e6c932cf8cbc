"""The package's one direction of dependence, checked: a module imports only its own layer or lower ones.

Layers (see ``ep/__init__.py``): ``method`` and ``data`` at the bottom, then ``show``, ``model``,
``studies``. Every ``from``/``import`` of an ``ep`` module anywhere in a file counts, function-level
imports included, so a lazy upward import fails too.
"""

import ast
from pathlib import Path

import pytest

EP = Path(__file__).resolve().parents[1] / "ep"
# what each part may import from ep (besides itself); "_version" is a leaf every part may use
ALLOWED = {
    "method": {"method"},
    "data": {"data"},
    "show": {"show", "method", "data"},
    "model": {"model", "method", "data", "show"},
    "studies": {"studies", "model", "method", "data", "show"},
    "exercises": {"exercises", "studies", "model", "method", "data", "show"},  # checks learners against all of them
}


def _part(module: str) -> str:
    """'ep.method.leader' -> 'method'; 'ep.data' -> 'data'; 'ep' -> '' (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Absolute names of the ep modules a file imports."""
    rel = path.relative_to(EP.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ep"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "ep":
                continue
            found.add(mod)
            if not node.module or mod.count(".") == 0:  # "from . import data" names modules
                found |= {f"{mod}.{a.name}" for a in node.names}
            elif mod.count(".") == 1 and (EP / mod.split(".")[1]).is_dir():  # "from ..model import chat"
                found |= {f"{mod}.{a.name}" for a in node.names}
    return found


FILES = sorted(p for p in EP.rglob("*.py") if p.relative_to(EP).parts[0] != "__init__.py")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EP)))
def test_no_upward_import(path):
    own = path.relative_to(EP).parts[0].removesuffix(".py")
    if own == "_version":
        assert not _imports(path)
        return
    for mod in _imports(path):
        part = _part(mod)
        if part in ("", "_version"):
            assert mod in ("ep", "ep._version"), f"{path.name} imports {mod}"
            continue
        assert part in ALLOWED[own], f"ep/{path.relative_to(EP)} ({own}) imports {mod} ({part}): an upward import"


def test_every_part_has_a_layer():
    parts = {p.relative_to(EP).parts[0].removesuffix(".py") for p in EP.rglob("*.py")}
    assert parts - {"__init__", "_version"} <= set(ALLOWED), parts


def test_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The test must be able to fail: a method module importing model code is caught."""
    bad = EP / "method" / "_probe_upward.py"
    bad.write_text("def f():\n    from ..model import activations\n")
    try:
        with pytest.raises(AssertionError, match="upward"):
            test_no_upward_import(bad)
    finally:
        bad.unlink()


def test_public_names():
    import ep

    assert set(ep.__all__) >= {"load_model", "token_activations", "iter_token_activations", "calibrate",
                               "build_dictionary", "leader_cluster", "Dictionary", "ActivationBatch", "data"}
    for name in ep.__all__:
        assert hasattr(ep, name), name
