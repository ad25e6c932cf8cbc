"""Render the executed notebooks as reveal.js decks for the room: a slide per section, code and figures included.

    python docs/build_slides.py [executed_dir] [out_dir] [--libs NODE_MODULES]     (defaults: outputs/, build/slides)

A notebook's cells carry no slide metadata; here each heading starts a slide (``#``/``##``) or a sub-slide
(``###``, below its section), and every other cell continues the slide above it, which scrolls when it is long.
The decks load reveal.js, jQuery, RequireJS and MathJax from their CDNs (nbconvert's defaults), which suits a
room with internet. For a room without it, ``--libs`` names a ``node_modules`` folder made once with

    npm install reveal.js@4.0.2 jquery@3 requirejs@2 mathjax@2.7.7

and the decks load those files instead (linked beside them as ``lib/``), as the tests do.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REVEAL_VERSION = "4.0.2"  # the version nbconvert's reveal template is written for


def mark_slides(nb):
    """A copy of the notebook (an nbformat node) with each cell's ``slideshow.slide_type`` set from the headings."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        first = cell.source.lstrip().split("\n", 1)[0] if cell.cell_type == "markdown" else ""
        level = len(m.group(1)) if (m := re.match(r"(#{1,3}) ", first)) else 0
        kind = "slide" if level in (1, 2) else "subslide" if level == 3 else "-"
        cell.metadata["slideshow"] = {"slide_type": kind}
    return nb


def exporter(libs: Path | None):
    """nbconvert's SlidesExporter: scrolling slides, and local copies of the libraries when ``libs`` is given."""
    from nbconvert import SlidesExporter

    options = {"reveal_scroll": True}
    if libs is not None:
        options.update(reveal_url_prefix="lib/reveal.js", jquery_url="lib/jquery/dist/jquery.min.js",
                       require_js_url="lib/requirejs/require.js",
                       mathjax_url="lib/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe")
    return SlidesExporter(**options)


def build(executed: Path, out: Path, libs: Path | None = None) -> list[Path]:
    """One ``NN_name.slides.html`` per executed chapter in ``out``; returns their paths."""
    import nbformat

    chapters = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [name for name in chapters if not (executed / name).exists()]
    if missing:
        raise SystemExit(f"no executed copy of {missing} in {executed}: run `make tutorial` first")
    if libs is not None:
        needed = [libs / "reveal.js" / "dist" / "reveal.js", libs / "jquery", libs / "requirejs", libs / "mathjax"]
        if not all(p.exists() for p in needed):
            raise SystemExit(f"{libs} lacks reveal.js, jquery, requirejs or mathjax: run "
                             f"`npm install reveal.js@{REVEAL_VERSION} jquery@3 requirejs@2 mathjax@2.7.7` there")
    out.mkdir(parents=True, exist_ok=True)
    if libs is not None:
        link = out / "lib"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(libs.resolve(), link, target_is_directory=True)
    deck_exporter, decks = exporter(libs), []
    for name in chapters:
        html, _ = deck_exporter.from_notebook_node(mark_slides(nbformat.read(executed / name, as_version=4)))
        deck = out / name.replace(".ipynb", ".slides.html")
        deck.write_text(html)
        decks.append(deck)
    return decks


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executed", nargs="?", default=REPO / "outputs", type=Path)
    parser.add_argument("out", nargs="?", default=REPO / "build" / "slides", type=Path)
    parser.add_argument("--libs", type=Path, help="a node_modules folder with reveal.js, jquery, requirejs, mathjax")
    args = parser.parse_args()
    for path in build(args.executed, args.out, args.libs):
        print(path)
