"""The paper's claims and this run's verdict on each: a table a learner reads, an assert only when asked.

A notebook run with another model, size or data set should end with "this claim does not hold here (0.62 against
the paper's 0.88)", not with a traceback. So each science claim is recorded, not asserted:

    claims = ep.Claims(check_claims)                        # "raise" (CI), "report" (default) or False (dry run)
    claims.add("refusal collapses", holds=delta > 0.2, paper="Δ 0.4 at p10", measured=f"Δ {delta:.2f}")
    claims.add("AUROC 0.881", holds=None, paper="0.881", measured="20k tokens", note="needs 10M build tokens")
    claims.finish()                                         # shows the table; raises in "raise" mode if one failed

``holds=None`` means "not measurable at this scale": it is reported and never raises. Shape and invariant
asserts stay plain asserts: they say the code is wrong, not that a finding did not reproduce.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MODES = ("raise", "report", False)
VERDICTS = {True: "holds", False: "does not hold", None: "not measurable at this scale"}


@dataclass(frozen=True)
class Claim:
    name: str
    verdict: str  # one of VERDICTS' values, or "dry run"
    paper: str  # the paper's value or statement
    measured: str  # this run's value, with its conditions
    note: str = ""


class Claims:
    """The claims one notebook checks, with this run's verdicts. ``mode``: "raise", "report" or False."""

    def __init__(self, mode: str | bool = "report"):
        if mode is True:  # the old boolean parameter: True meant "assert the claims"
            mode = "raise"
        if mode not in MODES:
            raise ValueError(f"check_claims must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.claims: list[Claim] = []

    def add(self, name: str, holds: bool | None, paper: str, measured: str, note: str = "") -> bool | None:
        """Record one claim; returns ``holds`` so a notebook can branch on it."""
        verdict = "dry run" if self.mode is False else VERDICTS[None if holds is None else bool(holds)]
        self.claims.append(Claim(name, verdict, paper, measured, note))
        return holds

    @property
    def failed(self) -> list[Claim]:
        return [c for c in self.claims if c.verdict == VERDICTS[False]]

    def records(self) -> list[dict]:
        """The table as plain dicts, for the results JSON."""
        return [asdict(c) for c in self.claims]

    def markdown(self) -> str:
        rows = ["| claim | the paper | this run | verdict |", "|---|---|---|---|"]
        for c in self.claims:
            note = f" ({c.note})" if c.note else ""
            rows.append(f"| {c.name} | {c.paper} | {c.measured}{note} | **{c.verdict}** |")
        return "\n".join(rows)

    def finish(self, display: bool = True) -> list[dict]:
        """Show the table (in a notebook: as Markdown); in "raise" mode, fail if any claim does not hold."""
        if display:
            try:
                from IPython.display import Markdown
                from IPython.display import display as show

                show(Markdown(self.markdown()))
            except ImportError:
                print(self.markdown())
        if self.mode == "raise" and self.failed:
            raise AssertionError("claims that did not hold: " + "; ".join(f"{c.name}: {c.measured}"
                                                                         for c in self.failed))
        return self.records()
