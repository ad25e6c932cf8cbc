"""Show what landed in a region: token contexts rendered as HTML, with the token highlighted.

A dictionary stores contexts as provenance triples (document, position, token id). To show one we
re-tokenize the document exactly as the extractor did (same tokenizer, same truncation) and print a
window of tokens around the position. ``Contexts.snippet`` is the lookup ``Dictionary.with_contexts``
takes, so the text can be stored in the dictionary file once and shown later without the documents.
"""

from __future__ import annotations

from ..method.dictionary import highlight_html


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
        return dictionary.region(region, lookup=lambda doc, pos: self.snippet(doc, pos, window)).html(n, 10_000)

    def gallery(self, dictionary, regions, n: int = 4, window: int = 10):
        """An IPython HTML object with a card for each region."""
        from IPython.display import HTML

        return HTML("".join(self.region_html(dictionary, int(r), n, window) for r in regions))
