"""Plots the notebooks share. Each function only draws what it is given and returns the axes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax):
    return ax if ax is not None else plt.subplots()[1]


def heatmap(values, xlabels: list[str], ylabel: str, title: str, ax=None, log: bool = True):
    """A [rows, cols] heatmap, e.g. residual norm per layer (rows) and token (cols)."""
    import seaborn as sns

    ax = _axes(ax)
    values = np.log10(np.asarray(values)) if log else np.asarray(values)
    sns.heatmap(values, ax=ax, xticklabels=xlabels, cmap="viridis", cbar_kws={"label": "log10" if log else ""})
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=60)
    return ax


def histograms(samples: dict[str, np.ndarray], xlabel: str, title: str = "", ax=None, bins: int = 80,
               vlines: dict[str, float] | None = None, logy: bool = False):
    """Overlaid density histograms of named samples on shared bins, with optional labelled vertical lines."""
    ax = _axes(ax)
    edges = np.histogram_bin_edges(np.concatenate([np.asarray(v).ravel() for v in samples.values()]), bins=bins)
    for name, values in samples.items():
        ax.hist(np.asarray(values).ravel(), bins=edges, density=True, alpha=0.55, label=name, log=logy)
    for i, (name, x) in enumerate((vlines or {}).items()):
        ax.axvline(x, color=f"C{i + len(samples)}", linestyle="--", label=f"{name} = {x:.3f}")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize="small")
    return ax


def by_group(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str = "", ax=None, max_x: int = 64):
    """Median and 10-90% band of ``y`` for each integer value of ``x`` (e.g. norm by token position)."""
    ax = _axes(ax)
    x, y = np.asarray(x), np.asarray(y)
    xs = np.unique(x[x <= max_x])
    q = np.array([np.percentile(y[x == v], [10, 50, 90]) for v in xs])
    ax.fill_between(xs, q[:, 0], q[:, 2], alpha=0.3, label="10-90%")
    ax.plot(xs, q[:, 1], marker=".", label="median")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return ax


def curve(x, ys: dict[str, np.ndarray], xlabel: str, ylabel: str, title: str = "", ax=None, logy: bool = False,
          logx: bool = False, references: dict[str, tuple[float, float]] | None = None):
    """One or more named lines over a shared x; ``references`` marks named points (x, y), e.g. a paper's number."""
    ax = _axes(ax)
    for name, y in ys.items():
        ax.plot(x, y, marker=".", label=name)
    for i, (name, (rx, ry)) in enumerate((references or {}).items()):
        ax.plot([rx], [ry], marker="*", ms=12, ls="none", color=f"C{i + len(ys)}", markeredgecolor="k", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if logy else "linear",
           xscale="log" if logx else "linear")
    if len(ys) + len(references or {}) > 1:
        ax.legend(fontsize="small")
    return ax


def trend(x, ys: dict[str, np.ndarray], target_x: float, xlabel: str, ylabel: str, title: str = "", ax=None,
          references: dict[str, float] | None = None):
    """Measured points on a log x, each series with its least-squares line in log x extended (dotted) to
    ``target_x``; ``references`` puts named values at ``target_x`` (stars). With one point a series has no line."""
    ax = _axes(ax)
    x = np.asarray(x, dtype=float)
    for i, (name, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=float)
        ax.plot(x, y, "o-", color=f"C{i}", label=name)
        if len(x) > 1:
            slope, intercept = np.polyfit(np.log10(x), y, 1)
            line = np.array([x.max(), target_x])
            ax.plot(line, intercept + slope * np.log10(line), ":", color=f"C{i}")
    for j, (name, value) in enumerate((references or {}).items()):
        ax.plot([target_x], [value], marker="*", ms=14, ls="none", color=f"C{j + len(ys)}", markeredgecolor="k",
                label=name)
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    return ax


def rates(labels: list[str], series: dict[str, tuple], xlabel: str = "rate", title: str = "", ax=None,
          reference: dict[str, float] | None = None):
    """Grouped horizontal bars of rates with error bars, one row per label.

    ``series`` maps a name to ``(values, lower, upper)`` (each one per label; lower/upper are interval
    ends, e.g. a binomial confidence interval); ``reference`` draws labelled vertical lines.
    """
    ax = _axes(ax)
    y = np.arange(len(labels))
    height = 0.8 / max(1, len(series))
    for i, (name, (values, lower, upper)) in enumerate(series.items()):
        values, lower, upper = (np.asarray(v, dtype=float) for v in (values, lower, upper))
        err = np.vstack([values - lower, upper - values])
        ax.barh(y + (i - (len(series) - 1) / 2) * height, values, height, xerr=err, capsize=2, label=name,
                color=f"C{i}", alpha=0.8, error_kw={"elinewidth": 1})
    for j, (name, x) in enumerate((reference or {}).items()):
        ax.axvline(x, color=f"C{j + len(series)}", linestyle="--", linewidth=1, label=name)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize="small", loc="best")
    return ax


def circle_partition(points: np.ndarray, exemplars, threshold: float, title: str = "", ax=None):
    """Leader clustering on the unit circle: points [N, 2] coloured by their nearest exemplar (the Voronoi cell),
    exemplars as stars with their θ-caps (the arc within cosine distance θ) drawn outside the circle, and the
    cell boundaries (halfway between neighbouring exemplars) as dashed spokes."""
    ax = _axes(ax)
    exemplars = np.asarray(exemplars)
    angle = np.arctan2(points[:, 1], points[:, 0])                  # [N]
    ex_angle = angle[exemplars]                                      # [K]
    cell = np.argmax(points @ points[exemplars].T, axis=1)           # [N] nearest exemplar
    colours = plt.cm.tab10(np.arange(len(exemplars)) % 10)
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="0.85", lw=1, zorder=0)
    half = np.arccos(np.clip(1.0 - threshold, -1.0, 1.0))            # cap half-angle: cos = 1 - θ
    around = np.sort(ex_angle)                                       # exemplars in angular order
    following = np.append(around[1:], around[0] + 2 * np.pi)        # each one's neighbour, wrapping around
    for mid in (around + following) / 2:                             # boundaries between neighbouring cells
        ax.plot([0, 1.2 * np.cos(mid)], [0, 1.2 * np.sin(mid)], color="0.6", ls="--", lw=0.8, zorder=1)
    for k, a in enumerate(ex_angle):
        arc = np.linspace(a - half, a + half, 50)
        ax.plot(1.12 * np.cos(arc), 1.12 * np.sin(arc), color=colours[k], lw=4, alpha=0.6, solid_capstyle="butt")
    ax.scatter(points[:, 0], points[:, 1], c=colours[cell], s=18, zorder=2)
    ax.scatter(np.cos(ex_angle), np.sin(ex_angle), marker="*", s=260, c=colours, edgecolors="k", zorder=3)
    ax.set(aspect="equal", xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), xticks=[], yticks=[], title=title)
    return ax
