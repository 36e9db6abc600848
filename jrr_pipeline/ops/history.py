"""A measure's history across evaluation runs, read from the warehouse's ``metrics`` table, and its plot."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from jrr_pipeline.ml.io import atomic_write_bytes
from jrr_pipeline.resources import Warehouse

COLUMNS = {
    "run_id": pl.Utf8,
    "created_at": pl.Datetime("us"),
    "dataset": pl.Utf8,
    "split": pl.Utf8,
    "system": pl.Utf8,
    "value": pl.Float64,
}


def metric_history(
    warehouse: Warehouse, dataset: str | None, measure: str = "nDCG@10", split: str | None = None
) -> pl.DataFrame:
    """One row per evaluation run and system: run_id, created_at, dataset, split, system, value.

    Ordered by time (then system). ``dataset`` / ``split`` None means every one. An empty frame (with
    these columns) when nothing was evaluated yet, including when the warehouse does not exist.
    """
    if not warehouse.has_table("metrics"):
        return pl.DataFrame(schema=COLUMNS)
    where, params = ["measure = ?"], [measure]
    if dataset is not None:
        where.append("dataset = ?")
        params.append(dataset)
    if split is not None:
        where.append("split = ?")
        params.append(split)
    frame = warehouse.query(
        "SELECT run_id, created_at, dataset, split, system, value FROM metrics "
        f"WHERE {' AND '.join(where)} ORDER BY created_at, dataset, system, run_id",
        params,
    )
    return frame.cast(COLUMNS) if frame.height else pl.DataFrame(schema=COLUMNS)


def plot_history(frame: pl.DataFrame, out_png: Path, measure: str = "nDCG@10") -> Path:
    """A line per system (``dataset/system`` when several datasets, ``system (split)`` when several
    splits), the measure over time, to PNG.

    Written to a temporary file beside ``out_png`` and renamed over it, so a failure never leaves a
    half-written plot. Raises ValueError for an empty frame.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = {"created_at", "system", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"history frame lacks columns {sorted(missing)}")
    if frame.height == 0:
        raise ValueError(f"no {measure} history to plot: no evaluation has been stored yet")
    several = "dataset" in frame.columns and frame["dataset"].n_unique() > 1
    label = pl.concat_str(["dataset", "system"], separator="/") if several else pl.col("system")
    if "split" in frame.columns and frame["split"].n_unique() > 1:  # e.g. test and dev rows
        label = pl.concat_str([label, pl.lit(" ("), pl.col("split"), pl.lit(")")])
    frame = frame.with_columns(label.alias("_label")).sort("created_at")

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for name in sorted(frame["_label"].unique().to_list()):
            rows = frame.filter(pl.col("_label") == name)
            ax.plot(rows["created_at"].to_list(), rows["value"].to_list(), marker="o", label=name)
        ax.set_xlabel("evaluated at")
        ax.set_ylabel(measure)
        ax.set_title(f"{measure} over evaluation runs")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.autofmt_xdate()
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        atomic_write_bytes(out_png, png.getvalue())
    finally:
        plt.close(fig)
    return out_png
