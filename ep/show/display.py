"""Show what landed in a region: token contexts rendered as HTML, with the token highlighted.

The one renderer of regions and contexts: ``highlight_html`` marks a token in its text, ``context_html`` shows
a stored ``Context`` (or the best that is stored), ``region_html`` a region's card and ``card_html`` the card's
frame; the explorer, the browser and ``ep.studies.compare.pair_html`` draw with them. The method layer
holds no HTML: a ``Region`` shown as a notebook cell's last line asks this module (registered below, as
``ep.model`` registers the extractor ``Dictionary.assign_texts`` uses).

A dictionary stores contexts as provenance triples (document, position, token id). To show one we
re-tokenize the document exactly as the extractor did (same tokenizer, same truncation) and print a
window of tokens around the position. ``Contexts.snippet`` is the lookup ``Dictionary.with_contexts``
takes, so the text can be stored in the dictionary file once and shown later without the documents.
"""

from __future__ import annotations

import html

from ..method.dictionary import register_region_renderer

MARK_STYLE = "background:#ffd54f;padding:0 2px"
TABLE_STYLE = "font-family:monospace;font-size:12px"


def highlight_html(left: str, token: str, right: str, width: int = 80) -> str:
    """(left, token, right) -> HTML, the token marked; at most ``width`` characters either side."""
    clip = lambda t: html.escape(t).replace("\n", "⏎")
    left = ("…" + left[-width:]) if len(left) > width else left
    right = (right[:width] + "…") if len(right) > width else right
    return f"{clip(left)}<mark style='{MARK_STYLE}'><b>{clip(token)}</b></mark>{clip(right)}"


def context_html(context, width: int = 80) -> str:
    """A stored context (``ep.method.dictionary.Context``) with its token highlighted, or the best that is stored:
    the start of its document, else where it was."""
    if context.text is None and context.document is not None:
        doc = context.document
        clipped = doc if len(doc) <= 2 * width else doc[:2 * width] + "…"
        return f"<i>token {context.pos} of:</i> {html.escape(clipped)}"
    if context.text is None:
        return f"<i>doc {context.doc}, position {context.pos}, token id {context.token} (no text stored)</i>"
    return highlight_html(*context.text, width=width)


def card_html(title: str, header: str, rows: str, table_style: str = "") -> str:
    """A card: a heading over a table (``header`` and ``rows`` are its <tr> rows)."""
    return (f"<h4 style='margin:8px 0 2px'>{title}</h4><table style='{TABLE_STYLE}{table_style}'>"
            f"{header}{rows}</table>")


def region_html(region, n: int | None = None, width: int = 80) -> str:
    """A region's card (``ep.method.dictionary.Region``): its exemplar, then up to ``n`` members nearest to and
    farthest from it (all stored when ``None``), each with its distance to the exemplar."""
    contexts = [region.exemplar, *region.nearest[:n], *region.farthest[:n]]
    rows = "".join(f"<tr><td>{'<b>exemplar</b>' if c.kind == 'exemplar' else c.kind}</td><td>{c.distance:.3f}</td>"
                   f"<td style='text-align:left'>{context_html(c, width)}</td></tr>" for c in contexts)
    return card_html(f"region {region.index}: {region.count} members, coherence {region.coherence:.2f}",
                     "<tr><th></th><th>distance</th><th>context</th></tr>", rows)


register_region_renderer(region_html)


class Contexts:
    """Token ids of a list of documents, tokenized as the extractor saw them."""

    def __init__(self, tokenizer, docs: list[str], context_length: int = 128, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        encode = lambda doc: tokenizer(doc, truncation=True, max_length=context_length,
                                       add_special_tokens=add_special_tokens)["input_ids"]
        self.ids = [encode(doc) for doc in docs]

    def snippet(self, doc: int, pos: int, window: int = 10) -> tuple[str, str, str]:
        """(left, token, right): ``window`` tokens either side of ``pos`` (BOS left out), '…' where cut."""
        ids = self.ids[doc]
        if not 0 <= pos < len(ids):
            raise IndexError(f"position {pos} outside document {doc} of {len(ids)} tokens")
        piece = lambda a, b: self.tokenizer.decode(ids[a:b])
        left, right = max(1, pos - window), min(len(ids), pos + window + 1)
        return (f"{'…' if left > 1 else ''}{piece(left, pos)}", piece(pos, pos + 1),
                f"{piece(pos + 1, right)}{'…' if right < len(ids) else ''}")

    def html(self, doc: int, pos: int, window: int = 10) -> str:
        """One context: ``window`` tokens either side, the token at ``pos`` highlighted."""
        return highlight_html(*self.snippet(doc, pos, window), width=10_000)

    def region_html(self, dictionary, region: int, n: int = 4, window: int = 10) -> str:
        """A card for one region: its exemplar, then members nearest to and farthest from it."""
        return region_html(dictionary.region(region, lookup=lambda doc, pos: self.snippet(doc, pos, window)), n,
                           10_000)

    def gallery(self, dictionary, regions, n: int = 4, window: int = 10):
        """An IPython HTML object with a card for each region."""
        from IPython.display import HTML

        return HTML("".join(self.region_html(dictionary, int(r), n, window) for r in regions))
