"""
A dictionary browser: a static site for any ep.Dictionary (built, loaded or published) that opens from disk.

``browser(d, out_dir)`` writes

- ``index.html``: a search box (by the regions' member tokens, labels and logit-lens tokens), a table of
  the regions found, and a 2-D map of the regions (the exemplars projected on their first two principal
  components, one dot per region, area ∝ members, colour = label score when given, else coherence), each
  dot a link to its page;
- ``regions/<k>.html``: one page per region: label and score, logit-lens tokens, member count, coherence,
  the stored contexts with the member token highlighted, and the nearest regions with links.

Plain files: the search is a few lines of JavaScript over JSON embedded in the index, the map is inline SVG;
no server, no CDN, no network. Everything shown is escaped (contexts are arbitrary text: a context holding
``<script>`` must show as text). Labels, scores and logit-lens tokens come in as plain data (this layer
talks to no model): ``ep.model.lens`` and ``ep.studies.labels`` make them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .display import context_html

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.ctx{font-family:monospace;font-size:12px;white-space:pre-wrap}mark{background:#ffd54f;padding:0 2px}
.tok{font-family:monospace;background:#eef;padding:0 3px;margin:1px;display:inline-block}
input{font-size:16px;padding:4px 8px;width:24em}svg a circle:hover{stroke:#000;stroke-width:2}
"""

_SEARCH_JS = """
const regions = JSON.parse(document.getElementById('regions-data').textContent);
const box = document.getElementById('search'), out = document.getElementById('results'),
      status = document.getElementById('status');
function row(r) {
  const tr = document.createElement('tr'), link = document.createElement('a');
  link.href = 'regions/' + r.id + '.html'; link.textContent = 'region ' + r.id;
  const cells = [link, r.count, r.coherence.toFixed(2), r.score === null ? '' : r.score.toFixed(2),
                 r.label || '', r.tokens.slice(0, 6).map(t => JSON.stringify(t)).join(' ')];
  for (const c of cells) { const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c); else td.textContent = c; tr.appendChild(td); }
  return tr;
}
function update() {
  const q = box.value.trim().toLowerCase();
  const hits = regions.filter(r => !q || (r.label || '').toLowerCase().includes(q) ||
    r.tokens.some(t => t.toLowerCase().includes(q)) || r.lens.some(t => t.toLowerCase().includes(q)));
  out.replaceChildren(...hits.slice(0, 200).map(row));
  status.textContent = hits.length + ' of ' + regions.length + ' regions' +
    (hits.length > 200 ? ' (first 200 shown)' : '');
}
box.addEventListener('input', update); update();
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def _script_json(value) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survive to close it or open a comment."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def projection(exemplars: np.ndarray) -> np.ndarray:
    """[K, d] -> [K, 2]: the rows on their first two principal components (fewer rows: zeros fill in)."""
    x = np.asarray(exemplars, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def _colour(value: float) -> str:
    """0 -> blue, 1 -> orange, through grey: a colour-blind-safe two-ended scale."""
    v = min(max(float(value), 0.0), 1.0)
    lo, mid, hi = np.array([33, 102, 172]), np.array([200, 200, 200]), np.array([230, 97, 1])
    rgb = lo + (mid - lo) * 2 * v if v < 0.5 else mid + (hi - mid) * (2 * v - 1)
    return "#" + "".join(f"{int(round(c)):02x}" for c in rgb)


def map_svg(d, regions: Sequence[int], colour_by: np.ndarray, colour_name: str, href=lambda k: f"regions/{k}.html",
            size: int = 560) -> str:
    """Inline SVG: the regions' exemplars projected to 2-D, a linked dot each (area ∝ members)."""
    regions = np.asarray(regions, dtype=int)
    xy = projection(d.exemplars.numpy()[regions])
    span = np.maximum(xy.max(axis=0) - xy.min(axis=0), 1e-9)
    pad = 16
    pos = pad + (xy - xy.min(axis=0)) / span * (size - 2 * pad)
    counts = d.counts.numpy()[regions]
    radius = 2 + 10 * np.sqrt(counts / counts.max())
    dots = []
    for i in np.argsort(-counts, kind="stable"):  # small dots drawn last, on top
        k = int(regions[i])
        tip = html.escape(f"region {k}: {int(counts[i])} members, {colour_name} {float(colour_by[i]):.2f}")
        dots.append(f"<a href='{html.escape(href(k))}'><circle cx='{pos[i, 0]:.1f}' cy='{size - pos[i, 1]:.1f}' "
                    f"r='{radius[i]:.1f}' fill='{_colour(colour_by[i])}' fill-opacity='0.75'><title>{tip}</title>"
                    f"</circle></a>")
    legend = (f"<text x='8' y='14' font-size='12'>colour: {html.escape(colour_name)} "
              f"(<tspan fill='{_colour(0)}'>0</tspan> → <tspan fill='{_colour(1)}'>1</tspan>); area: members</text>")
    return (f"<svg id='map' xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' "
            f"viewBox='0 0 {size} {size}' role='img' aria-label='map of the regions' "
            f"style='border:1px solid #ddd'>{legend}{''.join(dots)}</svg>")


def _per_region(values, K: int, name: str) -> dict:
    """A mapping or a length-K sequence -> {region: value} (None -> {})."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {int(k): v for k, v in values.items()}
    if len(values) != K:
        raise ValueError(f"{name}: {len(values)} values for {K} regions (pass a dict for some regions only)")
    return dict(enumerate(values))


def _lens_html(lens: Mapping[str, Sequence[str]]) -> str:
    chips = lambda toks: "".join(f"<span class=tok>{html.escape(repr(t))}</span>" for t in toks)
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{chips(toks)}</td></tr>" for name, toks in lens.items())
    return f"<h3>Logit lens</h3><table>{rows}</table>"


def _region_page(d, k: int, region, label, score, lens, near, written, labels, title: str) -> str:
    head = f"region {k}" + (f": {label}" if label else "")
    facts = [("members", str(region.count)), ("coherence", f"{region.coherence:.3f}")]
    if score is not None:
        facts.insert(0, ("label score", f"{float(score):.2f}"))
    facts_html = "".join(f"<tr><th>{a}</th><td>{html.escape(b)}</td></tr>" for a, b in facts)
    contexts = "".join(f"<tr><td>{c.kind}</td><td>{c.distance:.3f}</td><td class=ctx>{context_html(c, 60)}</td></tr>"
                       for c in [region.exemplar, *region.nearest, *region.farthest])
    near_rows = []
    for j, dist in zip(*near):
        j = int(j)
        name = f"region {j}" + (f": {labels[j]}" if labels.get(j) else "")
        link = f"<a href='{j}.html'>{html.escape(name)}</a>" if j in written else html.escape(name)
        ex = d.region(j).exemplar
        near_rows.append(f"<tr><td>{link}</td><td>{float(dist):.3f}</td><td>{int(d.counts[j])}</td>"
                         f"<td class=ctx>{context_html(ex, 30)}</td></tr>")
    body = (f"<p><a id='back' href='../index.html'>← {html.escape(title)}</a></p><h1>{html.escape(head)}</h1>"
            f"<table>{facts_html}</table>" + (_lens_html(lens) if lens else "") +
            f"<h3>Contexts</h3><table><tr><th></th><th>distance</th><th>context (member token marked)</th></tr>"
            f"{contexts}</table><h3>Nearest regions</h3><table><tr><th>region</th><th>exemplar distance</th>"
            f"<th>members</th><th>its exemplar</th></tr>{''.join(near_rows)}</table>")
    return _page(f"{head} · {title}", body)


def browser(d, out_dir, labels=None, scores=None, lens=None, lookup=None, regions=None, title: str | None = None,
            neighbours: int = 5, score_name: str = "label score") -> Path:
    """
    Write the static site of dictionary ``d`` to ``out_dir``; returns the path of its index.html.

    labels: {region: short text} (or a list, one per region); scores: {region: number in [0, 1]}, e.g. the
    labels' balanced accuracy; lens: {region: {"exemplar": [tokens], "mean": [tokens]}}, e.g. from
    ``ep.model.lens.logit_lens_labels``; lookup(doc, pos) -> (left, token, right) for dictionaries that keep
    no context text (see ``Dictionary.region``). regions: the regions to write (default all).
    """
    K = len(d)
    labels, scores = _per_region(labels, K, "labels"), _per_region(scores, K, "scores")
    lens = _per_region(lens, K, "lens")
    regions = list(range(K)) if regions is None else sorted({int(k) for k in regions})
    if not regions or not all(0 <= k < K for k in regions):
        raise ValueError(f"regions must be a non-empty subset of 0..{K - 1}")
    config = d.config
    if title is None and config is not None and config.model:  # a model path or hub id: its last part names it
        title = f"EP dictionary: {K} regions, {config.model.rstrip('/').split('/')[-1]} layer {config.layer}"
    title = title or f"EP dictionary: {K} regions"
    out = Path(out_dir)
    (out / "regions").mkdir(parents=True, exist_ok=True)
    written, records = set(regions), []
    for k in regions:
        r = d.region(k, lookup)
        tokens = list(dict.fromkeys(c.text[1] for c in [r.exemplar, *r.nearest, *r.farthest] if c.text))
        lens_k = lens.get(k) or {}
        records.append({"id": k, "count": r.count, "coherence": round(r.coherence, 4),
                        "score": None if scores.get(k) is None else float(scores[k]), "label": labels.get(k),
                        "tokens": tokens, "lens": [t for toks in lens_k.values() for t in toks]})
        page = _region_page(d, k, r, labels.get(k), scores.get(k), lens_k, d.neighbours(k, neighbours), written,
                            labels, title)
        (out / "regions" / f"{k}.html").write_text(page, encoding="utf-8")
    records.sort(key=lambda r: -r["count"])  # the table lists the largest regions first
    if scores:
        colour, colour_name = np.array([scores.get(k, np.nan) for k in regions], dtype=float), score_name
        colour = np.nan_to_num(colour, nan=0.5)
    else:
        colour, colour_name = d.coherence.numpy()[regions], "coherence"
    body = (f"<h1>{html.escape(title)}</h1><p>{K} regions, {int(d.counts.sum())} tokens, θ = {d.threshold:.4f}"
            f"{'' if len(regions) == K else f'; pages for the {len(regions)} shown'}. Search by a member token, a "
            f"label or a logit-lens token; click a dot on the map or a row to open a region.</p>"
            f"<input id='search' type='search' placeholder='token or label' autocomplete='off'>"
            f"<p id='status'></p><div style='display:flex;gap:1.5em;flex-wrap:wrap'>"
            f"{map_svg(d, regions, colour, colour_name)}<div style='max-height:580px;overflow:auto'><table><thead>"
            f"<tr><th>region</th><th>members</th><th>coherence</th><th>{html.escape(score_name)}</th><th>label</th>"
            f"<th>member tokens</th></tr></thead><tbody id='results'></tbody></table></div></div>"
            f"<script id='regions-data' type='application/json'>{_script_json(records)}</script>"
            f"<script>{_SEARCH_JS}</script>")
    index = out / "index.html"
    index.write_text(_page(title, body), encoding="utf-8")
    for page in (out / "regions").glob("*.html"):  # an earlier site's pages in out_dir would be linked by nothing
        if page.stem not in {str(k) for k in regions}:
            page.unlink()
    return index
