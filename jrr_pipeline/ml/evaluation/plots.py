"""PNG charts for the evaluation report, rendered with matplotlib's Agg canvas.

Figures are built with the object API (no pyplot), so nothing touches global matplotlib state
and rendering works headless and from worker threads. Each function returns PNG bytes; the
caller decides where (and how atomically) to write them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def measures_bar(systems: Mapping[str, Mapping[str, float]], measures: Sequence[str]) -> bytes:
    """Grouped bars: one group per measure, one bar per system (missing values left out)."""
    if not systems or not measures:
        raise ValueError("measures_bar: need at least one system and one measure")
    names = list(systems)
    fig = Figure(figsize=(max(6.0, 1.1 * len(measures) + 1), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(measures))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [systems[name].get(m, np.nan) for m in measures]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, list(measures))
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _png(fig)


def recall_curve(curves: Mapping[str, Mapping[int, float]]) -> bytes:
    """Recall@k against k (log x axis) for each system."""
    if not curves:
        raise ValueError("recall_curve: no systems")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    all_ks: set[int] = set()
    for name, raw in curves.items():
        points = {int(k): float(v) for k, v in raw.items()}  # keys may be str after a JSON trip
        ks = sorted(points)
        all_ks.update(ks)
        ax.plot(ks, [points[k] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _png(fig)


def per_query_sorted(per_query: Mapping[str, Mapping[str, float]], measure: str) -> bytes:
    """Each system's per-query values sorted descending: shows how scores spread over queries."""
    if not per_query:
        raise ValueError("per_query_sorted: no systems")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for name, values in per_query.items():
        if not values:
            continue
        ys = np.sort(np.fromiter(values.values(), dtype=float))[::-1]
        ax.plot(np.arange(1, ys.size + 1), ys, label=f"{name} (mean {ys.mean():.3f})")
    ax.set_xlabel("query (sorted by score)")
    ax.set_ylabel(measure)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def score_histogram(groups: Mapping[str, Sequence[float]], threshold: float | None = None,
                    xlabel: str = "reranker probability (calibrated)",
                    title: str = "Denoising: reranker scores of kept vs dropped candidates") -> bytes:
    """Overlaid histograms (log count) of scores in [0, 1], one per group, with a threshold line."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    bins = [i / 40 for i in range(41)]
    for name, values in groups.items():
        if len(values):
            ax.hist(list(values), bins=bins, alpha=0.55, label=f"{name} ({len(values)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count (log)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return _png(fig)
