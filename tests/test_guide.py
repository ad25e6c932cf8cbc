"""The instructor's guide agrees with the notebooks: an expected answer for every discussion question, the run
times the README measured, and minutes that add up."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "docs" / "guide.md").read_text()
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _markdown(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _questions(path: Path) -> list[str]:
    """Each **Discuss.** question, its continuation lines (a blockquote) joined."""
    found = re.findall(r"^> \*\*Discuss\.\*\* (.+(?:\n> (?!\*\*Discuss).+)*)", _markdown(path), re.M)
    return [" ".join(line.removeprefix("> ").strip() for line in q.split("\n")) for q in found]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_discussion_question_has_an_answer_in_the_guide(path):
    questions = _questions(path)
    if path.name.startswith("00"):  # 00 ends with a list only
        return
    assert questions, f"{path.name}: no **Discuss.** question"
    missing = [q for q in questions if f": {q}**" not in GUIDE]
    assert not missing, f"{path.name}: questions without an answer in docs/guide.md: {missing}"


def _minutes(cell: str) -> float:
    m = re.match(r"\**([\d.]+) (s|min|h)\b", cell.strip())
    value, unit = float(m.group(1)), m.group(2)
    return value / 60 if unit == "s" else value * 60 if unit == "h" else value


def test_time_table_uses_the_readme_run_times_and_adds_up():
    table = GUIDE[GUIDE.index("## Time per notebook"):GUIDE.index("## Tracks")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if re.match(r"\| (\d\d|\*\*series)", line)]
    notebooks, series = rows[:-1], rows[-1]
    assert [r[0][:2] for r in notebooks] == [p.name[:2] for p in NOTEBOOKS]
    readme = (REPO / "README.md").read_text()
    measured = {n: f"{fp32} / {bf16}" for n, fp32, bf16 in  # the README's table: | NN name | fp32 | bf16 |
                re.findall(r"^\| (\d\d) [^|]*\| (\d+ s) \| (\d+ s) \|", readme[readme.index("**Run times**"):], re.M)}
    for row in notebooks:
        assert row[1].startswith(measured[row[0][:2]]), f"{row[0]}: run time {row[1]}, README {measured[row[0][:2]]}"
        parts = sum(_minutes(c) for c in row[1:5])
        assert abs(_minutes(row[5]) - parts) <= 2.5, f"{row[0]}: total {row[5]} but parts add to {parts:.1f} min"
    for col in range(1, 6):
        total = sum(_minutes(r[col]) for r in notebooks)
        assert abs(_minutes(series[col]) - total) <= 0.05 * total + 0.1, f"column {col}: {series[col]} vs {total:.1f}"


def test_track_minutes_add_up():
    ninety = GUIDE[GUIDE.index("### 90 minutes"):GUIDE.index("### Half day")]
    half = GUIDE[GUIDE.index("### Half day"):GUIDE.index("### Full day")]
    for track, length in ((ninety, 90), (half, 210)):
        spans = [tuple(map(int, m)) for m in re.findall(r"^\| (\d+)–(\d+) \|", track, re.M)]
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans
    full = GUIDE[GUIDE.index("### Full day"):GUIDE.index("## Exercises")]
    for sums, total in re.findall(r"\| ([\d +]+) = (\d+) \|", full):
        assert sum(map(int, sums.split("+"))) == int(total)


def test_common_wrong_answers_list_every_mistake_the_checker_names():
    from ep import exercises

    table = GUIDE[GUIDE.index("### Common wrong answers"):GUIDE.index("## Expected answers")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| \d\d \| ([^|]+) \|", table, re.M)}
    assert set(rows) == set(exercises.EXERCISES)
    for name, ex in exercises.EXERCISES.items():
        assert [w.strip() for w in rows[name].split(";")] == list(ex.wrong), name


def test_guide_clones_the_repository_named_in_pyproject():
    import tomllib

    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    clones = re.findall(r"git clone (\S+)", GUIDE)
    assert clones and set(clones) == {url}


def test_ninety_minutes_make_room_for_setup_and_discussion():
    ninety = GUIDE[GUIDE.index("### 90 minutes"):GUIDE.index("### Half day")]
    rows = re.findall(r"^\| (\d+)–(\d+) \| ([^|]+)\|", ninety, re.M)
    minutes = {kind: sum(int(b) - int(a) for a, b, what in rows if what.startswith(kind)) for kind in ("Setup",
                                                                                                       "Discussion")}
    assert minutes["Setup"] >= 10 and minutes["Discussion"] >= 15, minutes
