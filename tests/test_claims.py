"""Claims are reported as a table; they raise only in "raise" mode, and "not measurable" never raises."""

import pytest

from ep.show.claims import Claims


def test_report_mode_keeps_going_and_tabulates():
    claims = Claims("report")
    assert claims.add("a", True, paper="1", measured="1.1") is True
    claims.add("b", False, paper="2", measured="0.5", note="small model")
    claims.add("c", None, paper="0.881", measured="n/a")
    records = claims.finish(display=False)
    assert [r["verdict"] for r in records] == ["holds", "does not hold", "not measurable at this scale"]
    assert "| b | 2 | 0.5 (small model) | **does not hold** |" in claims.markdown()


def test_raise_mode_names_every_failed_claim():
    claims = Claims("raise")
    claims.add("ok", True, paper="", measured="")
    claims.add("bad one", False, paper="", measured="0.1")
    claims.add("bad two", False, paper="", measured="0.2")
    claims.add("unmeasured", None, paper="", measured="")
    with pytest.raises(AssertionError, match="bad one: 0.1; bad two: 0.2"):
        claims.finish(display=False)


def test_raise_mode_passes_when_all_hold_or_are_unmeasurable():
    claims = Claims(True)  # the boolean parameter's True means "raise"
    claims.add("ok", True, paper="", measured="")
    claims.add("later", None, paper="", measured="")
    assert len(claims.finish(display=False)) == 2


def test_dry_run_never_judges():
    claims = Claims(False)
    claims.add("x", False, paper="", measured="")
    assert claims.finish(display=False)[0]["verdict"] == "dry run"


def test_bad_mode():
    with pytest.raises(ValueError, match="check_claims"):
        Claims("yes")
