"""Notebooks are lessons: no history of the project in them (what a notebook "used to" do, what "the issue" asked),
and no number a run measures typed into their prose (a cell prints it, or an assert checks it)."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HISTORY = re.compile(r"used to (?!build|train|score|choose|pick|make the|find)|\bthe issue\b|\bissue #?\d+|"
                     r"(this notebook'?s?|an|the|our) earlier (reading|version|protocol|recipe|run|default|draft)|"
                     r"earlier (protocol|versions?|runs? of this)|\bpreviously\b|\bno longer\b|\bformerly\b|"
                     r"\boriginally\b|the old (recipe|protocol|version|default)|what this notebook (did|once)|"
                     r"\b(this|the) (repo|repository|notebook|tutorial|package) (was|has been|had|now|used to)\b|"
                     r"\bwe (changed|switched|replaced|fixed|now)\b|\bafter the fix\b", re.I)


def test_history_is_found():
    for told in ("This notebook used to pick a region by hand.", "As the issue asks, we report both.",
                 "An earlier version chose p on held-out prompts.", "We previously used rows.", "This repo was slower.",
                 "The old recipe is kept as a control.", "We switched to whole documents.", "Originally, θ was fixed."):
        assert HISTORY.search(told), told
    for lesson in ("a row is farther than θ from every earlier exemplar", "the model used to build the dictionary",
                   "as this repository counts them", "earlier tokens in the stream"):
        assert not HISTORY.search(lesson), lesson


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_project_history(path):
    cells = json.loads(path.read_text())["cells"]
    found = [f"cell {i}: …{m.string[max(0, m.start() - 40):m.end() + 30]}…"
             for i, c in enumerate(cells) for m in HISTORY.finditer("".join(c["source"]))]
    assert not found, f"{path.name} tells the project's history: " + "; ".join(found)


# A measurement in prose: a ± spread, a decimal with two or more places, or a percentage (a number a run produced
# looks like one of these). Prose may hold the paper's numbers (cited: the sentence names the paper, its official
# code or a published file) and definitions; this run's numbers are printed by a cell or checked by an assert.
MEASURED = re.compile(r"±\s?\d*\.?\d+|≈\s?\d*\.\d+|(?<![\w.§/#:-])\d+\.\d{2,}(?!\w|\.\d)|(?<![\w.#])\d+(?:\.\d+)?\s?%")
CITED = re.compile(r"\bpaper|\bofficial|\bpublished|SAEBench|Gemma Scope|\(Wu et al|by definition", re.I)
LEVEL = re.compile(r"\b\d+% (?:interval|CI|confidence)")  # a confidence level names an interval, it measures nothing


def _sentences(markdown: str):
    """The prose of a markdown cell, sentence by sentence: no code, no links' targets, no tables of settings
    (the protocol tables compare settings with the paper's), no time budgets, no questions (a question reports
    nothing)."""
    text = re.sub(r"```.*?```|`[^`\n]*`|\]\([^)]*\)", " ", markdown, flags=re.S)
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.lstrip().startswith(("|", "**Time needed**")):
            continue
        for sentence in re.split(r"(?<=[.!?:])\s+(?=[A-Z*(\[])|\n\s*[-*] |\n#+ ", paragraph):
            if sentence.strip() and not sentence.rstrip(" )*").endswith("?"):
                yield " ".join(sentence.split())


def measurements_in_prose(markdown: str) -> list[str]:
    return [s for s in _sentences(markdown) if MEASURED.search(LEVEL.sub("", s)) and not CITED.search(s)]


def test_measurements_in_prose_are_found():
    assert measurements_in_prose("The run kept 0.82 of the regions.")
    assert measurements_in_prose("About 65% of prompts were refused, a spread of ±0.04.\n\nNext.")
    assert measurements_in_prose("- EP scores std ≈ 0.01 over seeds.")
    assert measurements_in_prose("The paper's number is close. Ours is 0.87.")  # the citation is per sentence
    assert measurements_in_prose("A rate's 95% interval spans about ±0.13.")
    for fine in ("The paper reports 0.881.", "At p = 1 and K = 1, θ is a percentile.", "Exercise 2.1 · The rule",
                 "`x = 0.25`", "Is 0.95 high?",
                 "[arXiv:2605.14347](https://arxiv.org/abs/2605.14347)", "**Time needed**: about 4.5 minutes.",
                 "| θ | 0.25 | 0.30 |",
                 "a 0.5B model, 0.5 is chance", "the official code uses 0.05", "a 95% interval is wide"):
        assert not measurements_in_prose(fine), fine


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_measured_number_typed_in_prose(path):
    cells = json.loads(path.read_text())["cells"]
    found = [f"cell {i}: {s}" for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             for s in measurements_in_prose("".join(c["source"]))]
    assert not found, f"{path.name} types numbers a run measures (print them, or cite the paper): " + "; ".join(found)
