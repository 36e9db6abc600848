"""Metric history from a real DuckDB warehouse, and its plot."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from jrr_pipeline.ops.history import metric_history, plot_history
from jrr_pipeline.resources import Warehouse

T0 = datetime(2026, 1, 4, 3, 0, 0)


def evaluation(run_id: str, day: int, values: dict[str, float], dataset: str = "toyset",
               split: str = "test") -> pl.DataFrame:
    rows = []
    for system, ndcg in values.items():
        rows.append((run_id, dataset, system, split, "nDCG@10", ndcg, T0 + timedelta(days=day)))
        rows.append((run_id, dataset, system, split, "R@10", min(1.0, ndcg + 0.1), T0 + timedelta(days=day)))
    return pl.DataFrame(rows, orient="row", schema=["run_id", "dataset", "system", "split", "measure",
                                                    "value", "created_at"])


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(path=str(tmp_path / "wh.duckdb"))


def test_history_is_ordered_by_time_and_filtered(warehouse: Warehouse):
    # appended out of order: the history must still come back by time
    warehouse.append("metrics", evaluation("r2", 7, {"bm25": 0.61, "joint": 0.70}))
    warehouse.append("metrics", evaluation("r1", 0, {"bm25": 0.61, "joint": 0.52}))
    warehouse.append("metrics", evaluation("o1", 3, {"bm25": 0.30}, dataset="other"))

    frame = metric_history(warehouse, "toyset")
    assert frame.columns == ["run_id", "created_at", "dataset", "split", "system", "value"]
    assert frame["run_id"].to_list() == ["r1", "r1", "r2", "r2"]
    assert frame["system"].to_list() == ["bm25", "joint", "bm25", "joint"]
    assert frame["value"].to_list() == pytest.approx([0.61, 0.52, 0.61, 0.70])
    assert frame["created_at"].is_sorted()

    recall = metric_history(warehouse, "toyset", measure="R@10")
    assert recall.filter(pl.col("run_id") == "r2", pl.col("system") == "joint")["value"].item() == pytest.approx(0.80)

    everything = metric_history(warehouse, None)
    assert everything["run_id"].to_list() == ["r1", "r1", "o1", "r2", "r2"]
    assert metric_history(warehouse, "toyset", split="dev").height == 0
    assert metric_history(warehouse, "nope").height == 0


def test_history_of_an_empty_or_missing_warehouse(warehouse: Warehouse, tmp_path: Path):
    frame = metric_history(warehouse, "toyset")
    assert frame.height == 0 and "value" in frame.columns
    with pytest.raises(ValueError, match="no nDCG@10 history"):
        plot_history(frame, tmp_path / "h.png", "nDCG@10")
    assert not (tmp_path / "h.png").exists()


def test_plot_writes_a_png_atomically(warehouse: Warehouse, tmp_path: Path):
    import matplotlib.image as mpimg

    warehouse.append("metrics", evaluation("r1", 0, {"bm25": 0.61, "joint": 0.52}))
    warehouse.append("metrics", evaluation("r2", 7, {"bm25": 0.61, "joint": 0.70}))
    out = tmp_path / "plots" / "history.png"
    assert plot_history(metric_history(warehouse, "toyset"), out, "nDCG@10") == out
    image = mpimg.imread(out)
    assert image.shape[0] == 400 and image.shape[1] == 700  # 7x4 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["history.png"]  # no temp file left

    before = out.read_bytes()
    with pytest.raises(ValueError, match="lacks columns"):
        plot_history(pl.DataFrame({"system": ["bm25"]}), out, "nDCG@10")
    assert out.read_bytes() == before  # a failed plot leaves the previous one


@pytest.fixture
def legend_labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The labels of every legend drawn while the test runs."""
    import matplotlib.axes

    labels: list[str] = []
    original = matplotlib.axes.Axes.legend

    def spy(self, *args, **kwargs):
        labels.extend(self.get_legend_handles_labels()[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", spy)
    return labels


def test_plot_labels_systems_per_dataset_when_several(warehouse: Warehouse, tmp_path: Path,
                                                      legend_labels: list[str]):
    warehouse.append("metrics", evaluation("r1", 0, {"bm25": 0.6}))
    warehouse.append("metrics", evaluation("o1", 1, {"bm25": 0.3}, dataset="other"))
    plot_history(metric_history(warehouse, None), tmp_path / "all.png", "nDCG@10")
    assert legend_labels == ["other/bm25", "toyset/bm25"]


def test_plot_labels_splits_when_several(warehouse: Warehouse, tmp_path: Path,
                                         legend_labels: list[str]):
    """An evaluation stores test and dev rows: one line per system and split, not a zigzag."""
    warehouse.append("metrics", evaluation("r1", 0, {"bm25": 0.6}))
    warehouse.append("metrics", evaluation("r1", 0, {"bm25": 0.5}, split="dev"))
    frame = metric_history(warehouse, "toyset")
    assert sorted(frame["split"].to_list()) == ["dev", "test"]
    plot_history(frame, tmp_path / "splits.png", "nDCG@10")
    assert legend_labels == ["bm25 (dev)", "bm25 (test)"]
    assert metric_history(warehouse, "toyset", split="dev")["value"].to_list() == [0.5]
