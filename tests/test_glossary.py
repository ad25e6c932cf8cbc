"""Every link to the glossary (from a notebook or a docs page) names a term the glossary defines; each notebook links
its jargon at first use; one name per method; the "Next" links walk the series in order.

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
              "member-count-and-coherence", "mahalanobis-distance-and-shrunk-covariance", "auroc", *JARGON.values()}
    assert needed <= ANCHORS, needed - ANCHORS


@pytest.mark.parametrize("path", [*NOTEBOOKS, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_glossary_links_resolve(path):
    links = re.findall(r"\]\((?:\.\./docs/|\.\./|)glossary\.md#([^)\s]+)\)", _markdown(path))
    unknown = sorted(set(links) - ANCHORS)
    assert not unknown, f"{path.name} links to glossary terms that do not exist: {unknown}"


def test_most_notebooks_link_the_glossary():
    linking = [p.name for p in NOTEBOOKS if "glossary.md#" in _markdown(p)]
    assert len(linking) >= len(NOTEBOOKS) - 1, linking  # 02 is being rewritten separately


# Jargon a learner may not know, as it appears in prose -> its glossary entry. The first markdown cell of a notebook
# that uses a term links it (a notebook can be opened on its own, e.g. in Colab).
JARGON = {
    r"\bbf16\b": "bf16-and-fp32", r"\bfp32\b": "bf16-and-fp32", r"\bGGUF\b": "gguf",
    r"\b[Pp]apermill\b": "papermill-and-the-parameter-cell", r"\bGemma Scope\b": "gemma-scope",
    r"\bSAEs?\b(?!-A)|\b[Ss]parse autoencoders?\b": "sparse-autoencoder", r"\bSAE-A\b": "sae-a",
    r"\bConcept(?:10|500)\b": "concept10-and-concept500", r"\bAUROC\b": "auroc", r"\bDiffMean\b": "diffmean",
    r"\bnnsight\b": "nnsight", r"\bLoRA\b": "lora", r"\b[Ll]ogit[- ]lens\b": "logit-lens",
    r"\bMahalanobis\b": "mahalanobis-distance-and-shrunk-covariance", r"\bHungarian\b": "hungarian-matching",
    r"\bAxBench\b": "axbench", r"θ": "threshold-and-percentile", r"\bVoronoi\b": "region-and-voronoi-cell",
    r"\bcoherence\b": "member-count-and-coherence", r"\bspherical centre\b": "spherical-centre",
    r"\bPile\b": "the-pile", r"\bsafetensors\b": "safetensors", r"\bchat template\b": "chat-template",
    r"\bOOD\b|\bout-of-distribution\b": "out-of-distribution", r"\bTopK SAE\b|\bsae-lens\b": "topk-sae-and-sae-lens",
    r"\bBOS\b|\battention sink\b": "attention-sink", r"\bdegenerate\b": "degenerate-completion",
    r"\bSAEBench\b|\bautointerp\b": "saebench", r"\bbalanced accuracy\b": "balanced-accuracy",
    r"\bcosine distance\b": "cosine-distance", r"\bmean-member direction": "mean-member-direction",
    r"\bLedoit": "mahalanobis-distance-and-shrunk-covariance",
}
# code, links' targets, HTML tags and maths are not prose (a link's text is)
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\]\([^)\s]*\)|<[^>\n]*>|https?://\S+|\$[^$\n]*\$|"
                       r"\*\*Next\*\*: \[[^\]]*\]", re.S)  # and the next notebook's title is a name, not a use


def _unlinked_jargon(cells: list[str]) -> list[str]:
    """The terms whose first use (the first markdown cell whose prose names them) has no link to their entry."""
    missing = []
    for pattern, anchor in JARGON.items():
        first = next((text for text in cells if re.search(pattern, NOT_PROSE.sub(" ", text))), None)
        if first is not None and f"glossary.md#{anchor}" not in first:
            missing.append(f"{anchor} (first used: …{re.search(pattern, NOT_PROSE.sub(' ', first)).group(0)}…)")
    return missing


def test_unlinked_jargon_is_found():
    assert _unlinked_jargon(["Models run in bf16 here.", "[bf16](../docs/glossary.md#bf16-and-fp32)"])
    assert _unlinked_jargon(["A `DiffMean` call.", "DiffMean is supervised."])  # code is not a first use
    assert not _unlinked_jargon(["`nnsight.trace`", "Read it with [nnsight](../docs/glossary.md#nnsight)."])


def _markdown_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jargon_is_linked_at_first_use(path):
    missing = _unlinked_jargon(_markdown_cells(path))
    assert not missing, f"{path.name}: link these terms to docs/glossary.md where they first appear: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_name_per_method(path):
    """In the text and in what the code prints (the function may be ``diff_in_means``: a Python name)."""
    every_cell = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert not re.search(r"diff-in-means|difference-in-means", every_cell, re.I), \
        f"{path.name}: the method is called DiffMean throughout"


def test_next_links_walk_the_series_in_order():
    for here, following in zip(NOTEBOOKS, [*NOTEBOOKS[1:], None]):
        text = _markdown(here)
        nexts = re.findall(r"\*\*Next\*\*:?\s*\[[^\]]*\]\(([^)]+)\)", text)
        named = set(re.findall(r"\*\*Next\*\*[^\n]*?notebook (\d\d)", text))
        if following is None:
            assert not nexts and not named, f"{here.name} is the last notebook"
            continue
        assert nexts == [following.name], f"{here.name}: one **Next** link, to {following.name}: {nexts}"
        assert named <= {following.name[:2]}, f"{here.name}: a **Next** names notebook {named}"
