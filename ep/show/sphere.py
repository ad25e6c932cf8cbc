"""
Leader clustering on the sphere S², to turn in your hands: exemplars, their Voronoi cells and the points they hold.

The picture of the official ``scripts/sphere_voronoi.py`` (exemplars and Voronoi cells on S²), made interactive:
``sphere_html(points, exemplars)`` returns one self-contained HTML page (a canvas and forty lines of JavaScript,
no library, no network) that you drag to rotate; ``sphere_figure`` draws the same scene with matplotlib, the
static fallback for the book and for viewers without JavaScript. The cells are shown by colouring a dense even
grid of the sphere by its nearest exemplar, which is what a Voronoi cell is.

``to_sphere(directions)`` brings a real dictionary down to S²: its exemplars on their first three principal
components, normalised (a projection: cells that touch on S² need not touch in d dimensions).
"""

from __future__ import annotations

import html
import json

import numpy as np

_JS = """
const S = JSON.parse(document.getElementById('scene-%(id)s').textContent);
const cv = document.getElementById('canvas-%(id)s'), g = cv.getContext('2d'), W = cv.width, R = W * 0.42;
let yaw = 0.6, pitch = 0.4, drag = null;
function rot(p) { const [x, y, z] = p, cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch),
  sp = Math.sin(pitch); const x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
  return [x1, cp * y - sp * z1, sp * y + cp * z1]; }
function dot(p, r, c, stroke) { const [x, y, z] = rot(p); if (z < 0) return; g.beginPath();
  g.arc(W / 2 + R * x, W / 2 - R * y, r, 0, 6.3); g.fillStyle = c; g.fill(); if (stroke) { g.stroke(); } }
function draw() { g.clearRect(0, 0, W, W); g.beginPath(); g.arc(W / 2, W / 2, R, 0, 6.3); g.strokeStyle = '#bbb';
  g.stroke(); g.strokeStyle = '#000';
  S.grid.forEach((p, i) => dot(p, 2.2, S.colours[S.grid_cell[i]] + '55'));
  S.points.forEach((p, i) => dot(p, 3, S.colours[S.point_cell[i]]));
  S.exemplars.forEach((p, k) => dot(p, 7, S.colours[k], true)); }
cv.onpointerdown = e => drag = [e.clientX, e.clientY, yaw, pitch];
window.addEventListener('pointerup', () => drag = null);
cv.onpointermove = e => { if (!drag) return; yaw = drag[2] + (e.clientX - drag[0]) / 150;
  pitch = Math.max(-1.5, Math.min(1.5, drag[3] + (e.clientY - drag[1]) / 150)); draw(); };
draw();
"""
_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
            "#bab0ac"]


def fibonacci_sphere(n: int) -> np.ndarray:
    """n points spread evenly over S² (the Fibonacci lattice): [n, 3] unit rows."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def to_sphere(directions: np.ndarray) -> np.ndarray:
    """[K, d] directions -> [K, 3] unit rows: the first three principal components, normalised."""
    x = np.asarray(directions, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xyz = np.pad(x @ vt[:3].T, ((0, 0), (0, max(0, 3 - vt.shape[0]))))
    return xyz / np.maximum(np.linalg.norm(xyz, axis=1, keepdims=True), 1e-12)


def _scene(points: np.ndarray, exemplars: np.ndarray, grid: int) -> dict:
    points, exemplars = np.asarray(points, float), np.asarray(exemplars, float)
    if points.shape[1:] != (3,) or exemplars.ndim != 2 or exemplars.shape[1] != 3 or not len(exemplars):
        raise ValueError("points [N, 3] and exemplars [K >= 1, 3] on the unit sphere")
    lattice = fibonacci_sphere(grid)
    nearest = lambda x: np.argmax(x @ exemplars.T, axis=1) if len(x) else np.zeros(0, int)
    r = lambda a: np.round(a, 4).tolist()
    return {"grid": r(lattice), "grid_cell": nearest(lattice).tolist(), "points": r(points),
            "point_cell": nearest(points).tolist(), "exemplars": r(exemplars),
            "colours": [_PALETTE[k % len(_PALETTE)] for k in range(len(exemplars))]}


def sphere_html(points: np.ndarray, exemplars: np.ndarray, title: str = "", grid: int = 2500, size: int = 420,
                element_id: str = "s2") -> str:
    """An interactive S² (drag to rotate): grid dots coloured by Voronoi cell, points [N, 3], exemplars [K, 3]
    as large dots. Self-contained HTML (a fragment: show it in a notebook with IPython.display.HTML)."""
    scene = json.dumps(_scene(points, exemplars, grid)).replace("<", "\\u003c")
    key = html.escape(element_id)
    return (f"<div><b>{html.escape(title)}</b> <i>(drag to rotate)</i><br><canvas id='canvas-{key}' width='{size}' "
            f"height='{size}' style='touch-action:none;cursor:grab'></canvas>"
            f"<script id='scene-{key}' type='application/json'>{scene}</script>"
            f"<script>(() => {{{_JS % {'id': key}}}})();</script></div>")


def sphere_figure(points: np.ndarray, exemplars: np.ndarray, title: str = "", grid: int = 2500, ax=None):
    """The same scene as sphere_html, drawn with matplotlib (a 3-D axes): the static fallback."""
    import matplotlib.pyplot as plt

    s = _scene(points, exemplars, grid)
    if ax is None:
        ax = plt.figure(figsize=(5, 5)).add_subplot(projection="3d")
    colours = np.array(s["colours"])
    for key, cell, size, alpha in (("grid", "grid_cell", 3, 0.25), ("points", "point_cell", 12, 0.9)):
        xyz = np.array(s[key]).reshape(-1, 3)
        ax.scatter(*xyz.T, c=colours[s[cell]], s=size, alpha=alpha, depthshade=False)
    ex = np.array(s["exemplars"])
    ax.scatter(*ex.T, c=colours, s=120, edgecolors="k", depthshade=False)
    ax.set(xticks=[], yticks=[], zticks=[], title=title, box_aspect=(1, 1, 1))
    return ax
