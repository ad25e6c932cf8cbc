"""Render the executed notebooks, the instructor's guide and the glossary as a static site.

    python docs/build_book.py [executed_dir] [out_dir]      (defaults: outputs/ and build/book)

The repo keeps notebooks without outputs; the book is where outputs are read. It takes the executed copies
that `make tutorial` (or the notebook tests, in outputs/tests/) left behind, stages them beside this folder's
pages, and runs Sphinx with MyST-NB (no execution). Missing chapters are an error, not a silent gap.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent


def repository_url() -> str:
    """The one place the repository's address lives: pyproject.toml's [project.urls]."""
    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("urls", {})
    return next((u for u in urls.values() if "github.com" in u), "https://github.com/ep-tutorial/ep-tutorial")


def _link_repo_files(path: Path, repo: str) -> None:
    """Markdown links from a notebook to repo files (../benchmarks/x.py) point at the repository in the book; links
    to docs/ pages (../docs/glossary.md#exemplar) point at the book's own page."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = re.sub(r"\]\(\.\./(?!docs/)([^)\s]+)\)", lambda m: f"]({repo}/blob/main/{m.group(1)})",
                          "".join(cell["source"]))
            cell["source"] = re.sub(r"\]\(\.\./docs/", "](../", text)  # the guide and glossary are pages of the book
    path.write_text(json.dumps(nb))


def build(executed: Path, out: Path) -> Path:
    chapters = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [name for name in chapters if not (executed / name).exists()]
    if missing:
        raise SystemExit(f"no executed copy of {missing} in {executed}: run `make tutorial` first")
    stage = out.parent / (out.name + "-src")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "notebooks").mkdir(parents=True)
    for page in DOCS.glob("*"):
        if page.suffix in (".md", ".py") and page.name != "build_book.py":
            shutil.copy(page, stage / page.name)
    for name in chapters:
        shutil.copy(executed / name, stage / "notebooks" / name)
        _link_repo_files(stage / "notebooks" / name, repository_url())
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", str(stage), str(out)], check=True)
    return out / "index.html"


if __name__ == "__main__":
    args = [Path(a).resolve() for a in sys.argv[1:3]]
    executed = args[0] if args else REPO / "outputs"
    out = args[1] if len(args) > 1 else REPO / "build" / "book"
    print(f"book: {build(executed, out)}")
