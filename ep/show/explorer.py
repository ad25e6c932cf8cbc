"""
An explorer over any ep.Dictionary: sort and filter regions by size and coherence, search their contexts for
a string, open one to see its exemplar, nearest and farthest members (token highlighted) and its nearest
regions.

In a notebook with a widget front end it is an ipywidgets panel. Its display also carries a static HTML
table, which is what a viewer without widgets shows (papermill, CI, GitHub, nbviewer), so an executed
notebook stays readable. Texts come from the dictionary (``with_contexts``, or published prompt texts) or
from a ``lookup(doc, pos) -> (left, token, right)`` such as ``ep.show.display.Contexts.snippet``.
"""

from __future__ import annotations

import html

import numpy as np

from .display import TABLE_STYLE, context_html, region_html

ORDERS = ("members", "coherence", "region")


def region_texts(dictionary, lookup=None) -> list[str]:
    """Per region, the lower-cased text of all its stored contexts (what search looks in)."""
    out = []
    for k in range(len(dictionary)):
        r = dictionary.region(k, lookup)
        parts = ["".join(c.text) if c.text else (c.document or "") for c in [r.exemplar, *r.nearest, *r.farthest]]
        out.append("\n".join(parts).lower())
    return out


def select_regions(dictionary, order: str = "members", descending: bool = True, min_members: int = 1,
                   min_coherence: float = 0.0, search: str = "", texts: list[str] | None = None) -> np.ndarray:
    """Region ids passing the filters, sorted (ties by region id). ``search`` needs ``texts`` (region_texts)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    counts, coherence = dictionary.counts.numpy(), dictionary.coherence.numpy()
    keep = (counts >= min_members) & (coherence >= min_coherence)
    if search:
        if texts is None:
            raise ValueError("search needs the region texts (region_texts(dictionary))")
        keep &= np.array([search.lower() in t for t in texts], dtype=bool)
    ids = np.nonzero(keep)[0]
    key = {"members": counts, "coherence": coherence, "region": np.arange(len(counts))}[order][ids]
    ids = ids[np.argsort(-key if descending else key, kind="stable")]
    return ids


def _short(context, width: int = 40) -> str:
    return context_html(context, width) if context.text or context.document else html.escape(f"doc {context.doc}")


def table_html(dictionary, regions, lookup=None, width: int = 40) -> str:
    """A static table: one row per region with its size, coherence, exemplar and nearest member."""
    rows = []
    for k in regions:
        r = dictionary.region(int(k), lookup)
        near = _short(r.nearest[0], width) if r.nearest else ""
        rows.append(f"<tr><td>{r.index}</td><td>{r.count}</td><td>{r.coherence:.2f}</td>"
                    f"<td style='text-align:left'>{_short(r.exemplar, width)}</td>"
                    f"<td style='text-align:left'>{near}</td></tr>")
    return (f"<table style='{TABLE_STYLE}'><tr><th>region</th><th>members</th>"
            "<th>coherence</th><th>exemplar</th><th>nearest member</th></tr>" + "".join(rows) + "</table>")


def region_card(dictionary, k: int, lookup=None, n: int = 5, neighbours: int = 5) -> str:
    """A region's card (exemplar, nearest and farthest members) and its nearest regions."""
    ids, dist = dictionary.neighbours(k, neighbours)
    near = "".join(f"<li>region {int(j)} (exemplar distance {float(x):.3f}, {int(dictionary.counts[j])} members): "
                   f"{_short(dictionary.region(int(j), lookup).exemplar)}</li>" for j, x in zip(ids, dist))
    return region_html(dictionary.region(k, lookup), n) + f"<p><b>nearest regions</b></p><ul>{near}</ul>"


class Explorer:
    """Browse a dictionary's regions. Display it (last line of a cell) or call .widget()."""

    def __init__(self, dictionary, lookup=None, n: int = 20, order: str = "members", static: bool = False):
        self.dictionary, self.lookup, self.n, self.static = dictionary, lookup, n, static
        self.texts = region_texts(dictionary, lookup)
        self.order = order
        self._widget = None

    def static_html(self) -> str:
        d = self.dictionary
        ids = select_regions(d, self.order)[:self.n]
        head = (f"<p><b>{len(d)} regions</b>, {int(d.counts.sum())} tokens, θ = {d.threshold:.4f}; the "
                f"{len(ids)} largest by {self.order} (open this notebook with widgets to sort, filter and search)</p>")
        return head + table_html(d, ids, self.lookup)

    def widget(self):
        """The ipywidgets panel (built once)."""
        if self._widget is not None:
            return self._widget
        import ipywidgets as W

        d = self.dictionary
        self.order_box = W.Dropdown(options=ORDERS, value=self.order, description="sort by")
        self.descending = W.Checkbox(value=True, description="largest first")
        self.min_members = W.BoundedIntText(value=1, min=1, max=int(d.counts.max()), description="min members")
        self.min_coherence = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="min coherence")
        self.search = W.Text(value="", placeholder="text in a context", description="search")
        self.choice = W.Select(options=[], rows=12, layout=W.Layout(width="420px"))
        self.card = W.HTML()
        self.status = W.HTML()
        for w in (self.order_box, self.descending, self.min_members, self.min_coherence, self.search):
            w.observe(lambda _: self._refresh(), names="value")
        self.choice.observe(lambda change: self._open(change["new"]), names="value")
        self._refresh()
        self._widget = W.VBox([W.HBox([self.order_box, self.descending, self.min_members]),
                               W.HBox([self.min_coherence, self.search]), self.status,
                               W.HBox([self.choice, self.card])])
        return self._widget

    def _refresh(self) -> None:
        d = self.dictionary
        ids = select_regions(d, self.order_box.value, self.descending.value, self.min_members.value,
                             self.min_coherence.value, self.search.value.strip(), self.texts)
        self.status.value = f"{len(ids)} of {len(d)} regions match"
        label = lambda k: f"{k:>6}  n={int(d.counts[k]):<6} coh={float(d.coherence[k]):.2f}"
        self.choice.options = [(label(int(k)), int(k)) for k in ids[:500]]
        self.choice.value = int(ids[0]) if len(ids) else None
        if not len(ids):
            self.card.value = "<i>no region matches</i>"

    def _open(self, k) -> None:
        if k is not None:
            self.card.value = region_card(self.dictionary, int(k), self.lookup)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": f"Explorer over {self.dictionary!r}", "text/html": self.static_html()}
        if self.static:
            return bundle
        try:
            widget = self.widget()
        except ImportError:  # no ipywidgets: the static table alone
            return bundle
        return {**bundle, **widget._repr_mimebundle_()}  # front ends with widgets show the panel


def explore(dictionary, lookup=None, n: int = 20, static: bool = False) -> Explorer:
    """An Explorer; make it a cell's last expression to display it (static=True: the HTML table only)."""
    return Explorer(dictionary, lookup, n, static=static)
