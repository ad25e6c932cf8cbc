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


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the ep modules a file imports (``source``: its text, if not the file's)."""
    rel = path.relative_to(EP.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
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


def _upward(path: Path, source: str | None = None) -> list[str]:
    """The imports of a file that break the layering, each said in a sentence."""
    own = path.relative_to(EP).parts[0].removesuffix(".py")
    if own == "_version":
        return [f"_version imports {m}" for m in _imports(path, source)]
    found = []
    for mod in _imports(path, source):
        part = _part(mod)
        if part in ("", "_version"):
            if mod not in ("ep", "ep._version"):
                found.append(f"{path.name} imports {mod}")
        elif part not in ALLOWED[own]:
            found.append(f"ep/{path.relative_to(EP)} ({own}) imports {mod} ({part}): an upward import")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EP)))
def test_no_upward_import(path):
    assert not _upward(path), _upward(path)


def test_every_part_has_a_layer():
    parts = {p.relative_to(EP).parts[0].removesuffix(".py") for p in EP.rglob("*.py")}
    assert parts - {"__init__", "_version"} <= set(ALLOWED), parts


def test_checker_sees_an_upward_import():
    """The test must be able to fail: a method module importing model code, even inside a function, is caught
    (checked on the text of such a module: nothing is written into the source tree)."""
    found = _upward(EP / "method" / "_probe.py", "def f():\n    from ..model import activations\n")
    assert found and "upward" in found[0]


def _module(path: Path) -> str:
    """ep/method/leader.py -> 'ep.method.leader'; ep/method/__init__.py -> 'ep.method'."""
    parts = path.relative_to(EP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph (module -> modules it imports) as [a, b, ..., a], or None (depth-first)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    """No two modules of ep import each other, directly or through others (function-level imports count).
    Packages (``ep``, ``ep.method``...) are left out: importing a submodule runs its package's __init__, which
    re-exports, but that is not a dependence of the submodule on its siblings."""
    modules = {_module(p): p for p in EP.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_cycle_finder_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_public_names():
    import ep

    assert set(ep.__all__) >= {"load_model", "token_activations", "iter_token_activations", "calibrate",
                               "build_dictionary", "leader_cluster", "Dictionary", "ActivationBatch", "data"}
    for name in ep.__all__:
        assert hasattr(ep, name), name
