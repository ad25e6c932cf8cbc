"""The slide decks (``make slides``): every executed chapter as a reveal.js deck that opens, advances and shows
its figures in headless Chromium. Runs after the notebook tests, from their executed copies, like the book test.

The decks load reveal.js and its helpers from ``$EP_SLIDES_LIBS`` (a node_modules folder, see
docs/build_slides.py); .ci/run installs it with npm. Without it (and outside CI) the test is skipped.
"""

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs"))
from build_slides import build  # noqa: E402
from conftest import made_once  # noqa: E402

LIBS = os.environ.get("EP_SLIDES_LIBS")
pytestmark = pytest.mark.skipif(
    not (LIBS and shutil.which("chromium") and shutil.which("chromedriver")) and not os.environ.get("CI"),
    reason="needs EP_SLIDES_LIBS (npm install reveal.js@4.0.2 jquery@3 requirejs@2 mathjax@2.7.7) and Chromium")


@pytest.fixture(scope="module")
def decks(tmp_path_factory, executed_notebooks):
    folder = made_once(tmp_path_factory, "slides", lambda folder: build(executed_notebooks, folder, Path(LIBS)))
    return sorted(folder.glob("*.slides.html"))


def _wait(chromium, script: str, seconds: float = 15.0):
    end = time.time() + seconds
    while time.time() < end:
        if value := chromium.execute_script(script):
            return value
        time.sleep(0.2)
    return chromium.execute_script(script)


def test_a_deck_per_chapter(decks):
    assert {d.name.removesuffix(".slides.html") for d in decks} == \
        {p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}


def test_decks_open_advance_and_show_their_figures(decks, chromium):
    from selenium.webdriver.common.keys import Keys

    for deck in decks:
        chromium.get(deck.as_uri())
        assert _wait(chromium, "return document.readyState === 'complete'", 30), f"{deck.name}: still loading"
        assert _wait(chromium, "return document.querySelector('.reveal.ready') !== null"), f"{deck.name}: not ready"
        sections = chromium.execute_script("return document.querySelectorAll('.slides > section').length")
        assert sections >= 3, f"{deck.name}: {sections} slides: the headings did not split it"
        first = chromium.execute_script("return document.querySelector('section.present').innerText.slice(0, 80)")
        chromium.find_element("css selector", "body").send_keys(Keys.ARROW_RIGHT)
        moved = _wait(chromium, f"return document.querySelector('section.present').innerText.slice(0, 80) !== "
                               f"{first!r}")
        assert moved, f"{deck.name}: the right arrow did not advance"
        images = chromium.execute_script(
            "return Array.from(document.images).filter(i => i.src.startsWith('data:'))"
            ".map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images), f"{deck.name}: {images.count(False)} of {len(images)} figures did not decode"
