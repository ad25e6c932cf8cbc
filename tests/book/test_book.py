"""The rendered book: built from the executed notebooks, every page opened in headless Chromium.

Runs after the notebook tests (``make test`` calls it second), from their executed copies in
outputs/tests/. Checks that each chapter, the guide and the glossary load, that every local image on every
page decoded (naturalWidth > 0), that the chapters carry figures, and that no local link is broken. The
dictionary browsers the book carries (docs/build_book.py) are searched and clicked through, every page opened.
"""

import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs"))
sys.path.insert(0, str(REPO / "tests"))
from browser_check import check_site  # noqa: E402
from build_book import build  # noqa: E402
from conftest import made_once  # noqa: E402


@pytest.fixture(scope="module")
def book(tmp_path_factory, executed_notebooks):
    return made_once(tmp_path_factory, "book", lambda folder: build(executed_notebooks, folder / "html")) / "html"


def _pages(book: Path) -> list[Path]:
    chapters = sorted((book / "notebooks").glob("*.html"))
    return [book / "index.html", book / "guide.html", book / "glossary.html", *chapters]


def test_every_chapter_is_in_the_book(book):
    names = {p.stem for p in (book / "notebooks").glob("*.html")}
    assert names == {p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}


def test_local_links_resolve(book):
    broken = []
    for page in _pages(book):
        for target in re.findall(r'(?:href|src)="([^"#?]+)', page.read_text()):
            url = urlparse(target)
            if url.scheme or url.netloc or target.startswith("mailto:"):
                continue
            if not (page.parent / unquote(url.path)).exists():
                broken.append(f"{page.relative_to(book)} -> {target}")
    assert not broken, broken[:10]


def _loaded(chromium, seconds: float = 30.0) -> bool:
    """Wait for the page to finish loading: a script the page asks for from a CDN may keep it busy offline."""
    end = time.time() + seconds
    while chromium.execute_script("return document.readyState") != "complete":
        if time.time() > end:
            return False
        time.sleep(0.2)
    return True


def test_pages_load_with_their_figures(book, chromium):
    figures = {}
    for page in _pages(book):
        chromium.get(page.as_uri())
        assert _loaded(chromium), f"{page.name} did not finish loading in 30 s"
        title = chromium.title
        assert title and "404" not in title, page
        images = chromium.execute_script(
            "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])")
        images = [(src, ok) for src, ok in images if src.startswith(("file:", "data:"))]  # badges need the web
        bad = [src for src, ok in images if not ok]
        assert not bad, f"{page.name}: images that did not load: {bad[:5]}"
        if page.parent.name == "notebooks":
            figures[page.stem] = len(images)
    assert all(figures.values()), f"chapters without a figure: {[k for k, v in figures.items() if not v]}"


def _browsers(book: Path) -> list[Path]:
    return sorted((book / "browsers").glob("*/index.html"))


def test_dictionary_browsers_are_linked_and_whole(book):
    sites = _browsers(book)
    assert {p.parent.name for p in sites} >= {"02_dictionary", "published_p10"}
    index = (book / "index.html").read_text()
    assert all(f"browsers/{p.parent.name}/index.html" in index for p in sites), "link every browser from the index"
    broken = []
    for site in sites:
        for page in [site, *(site.parent / "regions").glob("*.html")]:
            broken += [f"{page.relative_to(book)} -> {t}" for t in re.findall(r"href='([^'#?]+)'", page.read_text())
                       if not (page.parent / t).exists()]
    assert not broken, broken[:10]


def test_dictionary_browsers_in_chromium(book, chromium):
    for site in _browsers(book):
        check_site(chromium, site, pages=40)  # every page of a small site: tests/test_browser.py
