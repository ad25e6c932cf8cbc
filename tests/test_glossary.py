"""Every link to the glossary (from a notebook or a docs page) names a term the glossary defines.

The glossary's terms are level-2 headings; GitHub and the book (MyST, ``myst_heading_anchors``) give each the
same anchor, e.g. ``## Spherical centre`` -> ``glossary.md#spherical-centre``.
"""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _slug(heading: str) -> str:
    """GitHub's heading anchor (MyST's default slug is the same): lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


ANCHORS = {_slug(h) for h in re.findall(r"^## (.+)$", (REPO / "docs" / "glossary.md").read_text(), re.M)}


def _markdown(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "markdown")
    return path.read_text()


def test_slug_is_githubs():
    assert _slug("Persisted, dropped and introduced regions") == "persisted-dropped-and-introduced-regions"
    assert _slug("F1 and Dice") == "f1-and-dice"


def test_the_glossary_defines_the_terms_the_series_relies_on():
    needed = {"attention-sink", "spherical-centre", "threshold-and-percentile", "exemplar", "region-and-voronoi-cell",
              "member-count-and-coherence", "mahalanobis-distance-and-shrunk-covariance", "auroc"}
    assert needed <= ANCHORS, needed - ANCHORS


@pytest.mark.parametrize("path", [*NOTEBOOKS, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_glossary_links_resolve(path):
    links = re.findall(r"\]\((?:\.\./docs/|\.\./|)glossary\.md#([^)\s]+)\)", _markdown(path))
    unknown = sorted(set(links) - ANCHORS)
    assert not unknown, f"{path.name} links to glossary terms that do not exist: {unknown}"


def test_most_notebooks_link_the_glossary():
    linking = [p.name for p in NOTEBOOKS if "glossary.md#" in _markdown(p)]
    assert len(linking) >= len(NOTEBOOKS) - 1, linking  # 02 is being rewritten separately
