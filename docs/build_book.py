"""Render the executed notebooks, the instructor's guide and the glossary as a static site.

    python docs/build_book.py [executed_dir] [out_dir]      (defaults: outputs/ and build/book)

The repo keeps notebooks without outputs; the book is where outputs are read. It takes the executed copies
that `make tutorial` (or the notebook tests, in outputs/tests/) left behind, stages them beside this folder's
pages, and runs Sphinx with MyST-NB (no execution). Missing chapters are an error, not a silent gap.

It also writes dictionary browsers (``ep.show.browser``) into ``browsers/`` of the book, linked from its index:
notebook 02's dictionary (the file it saved in the results folder) and a published stand-in (Gemma 3 270M, layer 9,
p10, from the data mirror), each with the logit lens of every region, and notebook 10's dictionary with the labels
it scored (the files it saved in the results folder).
"""

from __future__ import annotations

import json
import os
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


def dictionary_browsers(executed: Path, out: Path) -> dict[str, Path]:
    """Write the book's dictionary browsers to ``out/<name>/`` (see the module docstring); {name: index.html}."""
    import torch

    import ep
    from ep.model.lens import region_lens
    from ep.show.display import Contexts

    if "EP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():  # the offline mirror
        os.environ["EP_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    results = executed / "results"
    models = {}

    def model(name: str):  # each model loaded once, in fp32 as the dictionaries were built
        if name not in models:
            models[name] = ep.load_model(name, dtype=torch.float32)[0]
        return models[name]

    sites = {}
    own = ep.Dictionary.load(results / "02_dictionary.safetensors")
    name, layer = own.config.model, own.config.layer
    sites["02_dictionary"] = ep.show.browser(own, out / "02_dictionary", lens=region_lens(model(name), own),
                                             title=f"Notebook 02's dictionary ({Path(name).name}, layer {layer})")
    published = ep.published.from_hub("gemma-3-270m", 9, 10)
    gemma = model("gemma-3-270m")
    published = published.with_contexts(Contexts(gemma.tokenizer, published.documents, context_length=64).snippet)
    sites["published_p10"] = ep.show.browser(published, out / "published_p10", lens=region_lens(gemma, published),
                                             title="A published-format dictionary (Gemma 3 270M stand-in, L9, p10)")
    d = ep.Dictionary.load(results / "10_labels.safetensors")  # notebook 10's, with the labels it scored
    scored = {int(k): v for k, v in json.loads((results / "10_labels_regions.json").read_text()).items()}
    sites["10_labels"] = ep.show.browser(
        d, out / "10_labels", labels={k: v["label"] for k, v in scored.items()},
        scores={k: v["score"] for k, v in scored.items()}, lens={k: v["lens"] for k, v in scored.items()},
        title="Notebook 10's dictionary and the labels it scored")
    return sites


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
    dictionary_browsers(executed, out / "browsers")
    return out / "index.html"


if __name__ == "__main__":
    args = [Path(a).resolve() for a in sys.argv[1:3]]
    executed = args[0] if args else REPO / "outputs"
    out = args[1] if len(args) > 1 else REPO / "build" / "book"
    print(f"book: {build(executed, out)}")
