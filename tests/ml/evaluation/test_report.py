"""Report files: exact JSON, markdown numbers, valid PNG plots, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from jrr_pipeline.ml.evaluation import markdown_table, read_report, write_report

SYSTEMS = {
    "bm25": {"nDCG@10": 0.679, "RR@10": 0.6431, "R@100": 0.9127},
    "joint_retriever": {"nDCG@10": 0.7012, "RR@10": 0.6655, "R@100": 0.9502},
}
CURVES = {
    "bm25": {1: 0.53, 5: 0.73, 10: 0.81, 20: 0.85, 100: 0.91},
    "joint_retriever": {1: 0.55, 5: 0.76, 10: 0.84, 20: 0.9, 100: 0.95},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0.05  # not a blank canvas


def test_write_and_read_report(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "scifact"
    per_q = {
        "bm25": {"q1": 1.0, "q2": 0.5, "q3": 0.0},
        "joint_retriever": {"q1": 1.0, "q2": 1.0, "q3": 0.25},
    }
    paths = write_report(
        out,
        "scifact",
        "test",
        SYSTEMS,
        "abc123",
        extra={"num_queries": 300},
        per_query=per_q,
        recall_curves=CURVES,
    )
    assert paths["json"] == out / "evaluation.json" and paths["markdown"] == out / "evaluation.md"
    assert [p.name for p in paths["plots"]] == [
        "measures_bar.png",
        "recall_curve.png",
        "per_query.png",
    ]
    raw = json.loads(paths["json"].read_text())
    assert raw == {
        "dataset": "scifact",
        "split": "test",
        "systems": SYSTEMS,
        "mlflow_run_id": "abc123",
        "num_queries": 300,
    }
    assert read_report(out) == raw and read_report(paths["json"]) == raw
    md = paths["markdown"].read_text()
    assert md.startswith("# Evaluation: scifact")
    for value in ("0.6790", "0.6431", "0.9127", "**0.7012**", "**0.9502**", "abc123"):
        assert value in md
    for png in paths["plots"]:
        _check_png(png)
        assert f"]({png.name})" in md
    assert json.loads(paths["per_query"].read_text())["systems"] == per_q
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_report_without_optional_parts(tmp_path: Path) -> None:
    paths = write_report(tmp_path, "tiny", "dev", {"bm25": {"nDCG@10": 0.5}}, None)
    assert [p.name for p in paths["plots"]] == ["measures_bar.png"]
    _check_png(paths["plots"][0])
    assert read_report(tmp_path)["mlflow_run_id"] is None
    assert "MLflow run: none" in paths["markdown"].read_text()


def test_failed_write_keeps_previous_report(tmp_path: Path) -> None:
    write_report(tmp_path, "scifact", "test", SYSTEMS, "run1")
    with pytest.raises(ValueError, match="'bm25' measure 'nDCG@10' is nan"):
        write_report(tmp_path, "scifact", "test", {"bm25": {"nDCG@10": float("nan")}}, "run2")
    assert read_report(tmp_path)["mlflow_run_id"] == "run1"
    with pytest.raises(ValueError, match=r"extra keys \['split'\] clash"):
        write_report(tmp_path, "scifact", "test", SYSTEMS, "run3", extra={"split": "x"})
    assert read_report(tmp_path)["systems"] == SYSTEMS


def test_read_report_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluation.json"):
        read_report(tmp_path)
    (tmp_path / "evaluation.json").write_text("{oops")
    with pytest.raises(ValueError, match="evaluation.json: not valid JSON"):
        read_report(tmp_path)
    (tmp_path / "evaluation.json").write_text('{"dataset": "x", "split": "test", "systems": {}}')
    with pytest.raises(ValueError, match="field 'mlflow_run_id': missing"):
        read_report(tmp_path)


def test_markdown_table() -> None:
    table = markdown_table(SYSTEMS, ["nDCG@10", "R@100", "MAP"])
    lines = table.splitlines()
    assert lines[0] == "| system | nDCG@10 | R@100 | MAP |"
    assert lines[2] == "| bm25 | 0.6790 | 0.9127 | – |"
    assert lines[3] == "| joint_retriever | **0.7012** | **0.9502** | – |"
    single = markdown_table({"bm25": {"nDCG@10": 0.25}}, ["nDCG@10"])
    assert single.splitlines()[2] == "| bm25 | 0.2500 |"


def test_win_loss_counts_and_report_section(tmp_path):
    from jrr_pipeline.ml.evaluation.report import win_loss

    per_query = {"warmup_retriever": {"q1": 0.5, "q2": 0.2, "q3": 0.7, "q4": 0.0},
                 "joint_retriever": {"q1": 0.6, "q2": 0.2, "q3": 0.1}}
    assert win_loss(per_query, "warmup_retriever") == {
        "joint_retriever": {"wins": 1, "losses": 1, "ties": 2}}  # q4 missing = 0 = tie
    with pytest.raises(ValueError, match="baseline"):
        win_loss(per_query, "bm25")
    systems = {name: {"nDCG@10": 0.5} for name in per_query}
    paths = write_report(tmp_path, "toy", "test", systems, "run", per_query=per_query)
    report = json.loads(paths["json"].read_text())
    assert report["win_loss"]["joint_retriever"]["wins"] == 1
    assert "| joint_retriever | 1 | 1 | 2 |" in paths["markdown"].read_text()


DEV_SYSTEMS = {
    "bm25": {"nDCG@10": 0.6012, "RR@10": 0.5511, "R@100": 0.8888},
    "joint_retriever": {"nDCG@10": 0.6543, "RR@10": 0.6001, "R@100": 0.9001},
}


def test_report_with_dev_figures_and_selection(tmp_path: Path) -> None:
    selection = {"split": "dev", "origin": "carved from train", "queries": 81}
    paths = write_report(tmp_path, "scifact", "test", SYSTEMS, "run", extra={"num_queries": 300},
                         selection=selection, dev_systems=DEV_SYSTEMS)
    raw = read_report(tmp_path)
    assert list(raw) == ["dataset", "split", "selection", "systems", "dev_systems",
                         "mlflow_run_id", "num_queries"]
    assert raw["selection"] == selection
    assert raw["dev_systems"] == DEV_SYSTEMS and raw["systems"] == SYSTEMS
    md = paths["markdown"].read_text()
    test_table, dev_table = md.index("### test figures"), md.index("### dev figures")
    assert test_table < md.index("| bm25 | 0.6790 |") < dev_table < md.index("| bm25 | 0.6012 |")
    assert "chosen on `dev` (carved from train, 81 queries); `test` is read only" in md
    assert "**0.6543**" in md  # the dev table marks its own best values


def test_report_without_a_dev_split_says_so(tmp_path: Path) -> None:
    selection = {"split": None, "origin": None, "queries": 0, "note": "no dev split: no dev figures"}
    paths = write_report(tmp_path, "nodev", "test", SYSTEMS, "run", selection=selection)
    raw = read_report(tmp_path)
    assert raw["selection"] == selection and "dev_systems" not in raw
    md = paths["markdown"].read_text()
    assert "No selection split: no dev split: no dev figures." in md
    assert "### dev figures" not in md and "### test figures" not in md
    with pytest.raises(ValueError, match="dev_systems given without a selection split"):
        write_report(tmp_path, "nodev", "test", SYSTEMS, "run", selection=selection,
                     dev_systems=DEV_SYSTEMS)
    with pytest.raises(ValueError, match=r"extra keys \['dev_systems'\] clash"):
        write_report(tmp_path, "nodev", "test", SYSTEMS, "run", extra={"dev_systems": {}})
    (tmp_path / "evaluation.json").write_text(json.dumps({**raw, "dev_systems": {"bm25": 0.5}}))
    with pytest.raises(ValueError, match="field 'dev_systems'"):
        read_report(tmp_path)
