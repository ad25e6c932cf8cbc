"""Show what landed in a region: token contexts rendered as HTML, with the token highlighted.

A dictionary stores contexts as provenance triples (document, position, token id). To show one we
re-tokenize the document exactly as the extractor did (same tokenizer, same truncation) and print a
window of tokens around the position.
"""

from __future__ import annotations

import html

import numpy as np


class Contexts:
    """Token ids of a list of documents, tokenized as the extractor saw them."""

    def __init__(self, tokenizer, docs: list[str], context_length: int = 128, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        encode = lambda doc: tokenizer(doc, truncation=True, max_length=context_length,
                                       add_special_tokens=add_special_tokens)["input_ids"]
        self.ids = [encode(doc) for doc in docs]

    def html(self, doc: int, pos: int, window: int = 10) -> str:
        """One context: ``window`` tokens either side, the token at ``pos`` highlighted."""
        ids = self.ids[doc]
        piece = lambda a, b: html.escape(self.tokenizer.decode(ids[a:b])).replace("\n", "⏎")
        left, right = max(1, pos - window), min(len(ids), pos + window + 1)
        return (f"{'…' if left > 1 else ''}{piece(left, pos)}"
                f"<mark style='background:#ffd54f;padding:0 2px'><b>{piece(pos, pos + 1)}</b></mark>"
                f"{piece(pos + 1, right)}{'…' if right < len(ids) else ''}")

    def region_html(self, dictionary, region: int, n: int = 4, window: int = 10) -> str:
        """A card for one region: its exemplar, then members nearest to and farthest from it."""
        doc, pos, _ = dictionary.exemplar_context[region].tolist()
        rows = [f"<tr><td><b>exemplar</b></td><td>0</td><td>{self.html(doc, pos, window)}</td></tr>"]
        for kind, ctx, dist in (("nearest", dictionary.nearest_contexts, dictionary.nearest_dist),
                                ("farthest", dictionary.farthest_contexts, dictionary.farthest_dist)):
            for (doc, pos, _, _), d in list(zip(ctx[region].tolist(), dist[region].tolist()))[:n]:
                if doc >= 0 and not np.isnan(d):
                    rows.append(f"<tr><td>{kind}</td><td>{d:.3f}</td><td>{self.html(doc, pos, window)}</td></tr>")
        head = (f"<h4 style='margin:8px 0 2px'>region {region}: {int(dictionary.counts[region])} members, "
                f"coherence {float(dictionary.coherence[region]):.2f}</h4>")
        return (head + "<table style='font-family:monospace;font-size:12px'>"
                "<tr><th></th><th>distance</th><th>context</th></tr>" + "".join(rows) + "</table>")

    def gallery(self, dictionary, regions, n: int = 4, window: int = 10):
        """An IPython HTML object with a card for each region."""
        from IPython.display import HTML

        return HTML("".join(self.region_html(dictionary, int(r), n, window) for r in regions))
