"""The repository's address lives in one place (pyproject.toml [project.urls]); everything that names it agrees.

Publishing the tutorial under another name is then a one-line change plus this test telling you what else to fix.
Also: every notebook's Colab install cell asks only for extras the package declares, and never for torch.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
URL = PROJECT["urls"]["Repository"]
SLUG = URL.removeprefix("https://github.com/")
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_url_is_a_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL), URL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_badge_and_install_cell_use_the_url(path):
    cells = json.loads(path.read_text())["cells"]
    text = "".join("".join(c["source"]) for c in cells)
    badge = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/{path.name}"
    assert badge in text, f"{path.name}: no Colab badge pointing at {badge}"
    install = re.findall(r'%pip install -q "ep-tutorial\[([\w,]+)\] @ git\+([^"]+)"', text)
    assert install, f"{path.name}: no install cell"
    extras, url = install[0]
    assert url == URL, f"{path.name} installs from {url}, pyproject says {URL}"
    assert set(extras.split(",")) <= set(PROJECT["optional-dependencies"]) - {"cpu"}, extras
    assert "torch" not in re.findall(r"%pip install[^\n]*", text)[0].split("ep-tutorial")[0]


def test_readme_badges_use_the_url():
    readme = (REPO / "README.md").read_text()
    badges = re.findall(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob", readme)
    assert badges and set(badges) == {SLUG}
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README does not list {path.name}"


def test_the_book_reads_the_url_from_pyproject():
    import sys

    sys.path.insert(0, str(REPO / "docs"))
    from build_book import repository_url

    assert repository_url() == URL
