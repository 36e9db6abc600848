"""The whole asset graph through Dagster: materialize with checks, re-run, staleness, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from dagster import instance_for_test

from jrr_pipeline.runner import run_pipeline

ALL_ASSETS = {"corpus", "queries", "qrels", "bm25_index", "bm25_negatives", "warmup_retriever",
              "warmup_reranker", "dense_negatives", "evaluation_report"}


@pytest.fixture
def instance(jrr_env: Path):
    (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(jrr_env / "dagster")) as inst:
        yield inst


def test_full_graph_then_noop_then_one_stale_branch(beir_dir, jrr_env, instance, tmp_path,
                                                     monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written to the current directory
    data = tmp_path / "toyset"
    data.mkdir()
    for f in beir_dir.rglob("*"):
        if f.is_file():
            (data / f.relative_to(beir_dir)).parent.mkdir(parents=True, exist_ok=True)
            (data / f.relative_to(beir_dir)).write_bytes(f.read_bytes())

    first = run_pipeline(str(data), preset="ci", echo=None, instance=instance)
    assert first.success, first.failure
    assert set(first.materialized) == ALL_ASSETS
    assert first.checks and all(first.checks.values()), first.checks
    assert "qrels:qrels_no_split_leak" in first.checks

    report = json.loads(first.report_path.read_text())
    assert report["dataset"] == "toyset" and report["split"] == "test"
    bm25 = report["systems"]["bm25"]
    assert set(bm25) >= {"nDCG@10", "RR@10", "R@1", "R@5", "R@10", "R@20", "R@100", "MAP"}
    assert 0.5 < bm25["nDCG@10"] <= 1.0  # queries use their topic's words: BM25 finds most
    assert bm25["R@1"] <= bm25["R@10"] <= bm25["R@100"]
    dense = report["systems"]["warmup_retriever"]
    reranked = report["systems"]["warmup_retriever+reranker"]
    print("toyset nDCG@10", bm25["nDCG@10"], dense["nDCG@10"], reranked["nDCG@10"])
    assert dense["nDCG@10"] > 0.3  # MiniLM after two ci steps still matches topic words
    assert 0.0 < reranked["nDCG@10"] <= 1.0
    assert reranked["R@20"] <= dense["R@20"] + 1e-9  # reranking top-10 cannot add documents
    assert (first.report_path.parent / "evaluation.md").read_text().count("bm25") >= 1
    assert any(p.suffix == ".png" for p in first.report_path.parent.iterdir())

    con = duckdb.connect(str(jrr_env / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*) from corpus").fetchone()[0] == 80
    assert con.execute("select count(distinct query_id) from negatives").fetchone()[0] == 40
    assert con.execute("select max(rank) from negatives").fetchone()[0] <= 20  # ci preset top_k
    stored = con.execute(
        "select value from metrics where system='bm25' and measure='nDCG@10'").fetchall()
    con.close()
    assert stored == [(pytest.approx(bm25["nDCG@10"]),)]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{jrr_env / 'mlflow.db'}")
    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.metrics["bm25.nDCG_at_10"] == pytest.approx(bm25["nDCG@10"])
    assert run.data.tags["dagster.run_id"] == first.run_id

    assert list(cwd.iterdir()) == []

    again = run_pipeline(str(data), preset="ci", echo=None, instance=instance)
    assert again.success and again.materialized == []
    assert set(again.fresh) == ALL_ASSETS

    # edit one query: only the query-dependent branch is stale; the BM25 index stays fresh
    lines = (data / "queries.jsonl").read_text().splitlines()
    first_query = json.loads(lines[0])
    first_query["text"] += " aggregate"
    lines[0] = json.dumps(first_query)
    (data / "queries.jsonl").write_text("\n".join(lines) + "\n")
    third = run_pipeline(str(data), preset="ci", echo=None, instance=instance)
    assert third.success, third.failure
    assert set(third.materialized) == ALL_ASSETS - {"bm25_index"}

    # last: the CLI resets process-wide Dagster state (DAGSTER_HOME) that the runs above rely on
    from jrr_pipeline.cli import main

    assert main(["report", "--history"]) == 0
    assert (jrr_env / "reports" / "history_nDCG_at_10.png").stat().st_size > 5000


def _break_corpus_json(d: Path) -> None:
    lines = (d / "corpus.jsonl").read_text().splitlines()
    lines[6] = lines[6][:-1]
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n")


def _drop_text_field(d: Path) -> None:
    lines = (d / "corpus.jsonl").read_text().splitlines()
    row = json.loads(lines[6])
    del row["text"]
    lines[6] = json.dumps(row)
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n")


def _duplicate_query(d: Path) -> None:
    lines = (d / "queries.jsonl").read_text().splitlines()
    (d / "queries.jsonl").write_text("\n".join(lines + [lines[2]]) + "\n")


def _unknown_doc(d: Path) -> None:
    with open(d / "qrels" / "test.tsv", "a") as fh:
        fh.write("q0_2\tno_such_doc\t1\n")


def _latin1_byte(d: Path) -> None:
    data = (d / "corpus.jsonl").read_bytes().splitlines(keepends=True)
    data[6] = data[6].replace(b"report", b"r\xe9port", 1)
    (d / "corpus.jsonl").write_bytes(b"".join(data))


def _empty_queries(d: Path) -> None:
    (d / "queries.jsonl").write_text("")


@pytest.mark.parametrize(("damage", "expected"), [
    (_break_corpus_json, "corpus.jsonl:7"),
    (_drop_text_field, "corpus.jsonl:7: field 'text'"),
    (_duplicate_query, "queries.jsonl:61"),
    (_unknown_doc, "test.tsv:22"),
    (_latin1_byte, "corpus.jsonl:7"),
    (_empty_queries, "queries.jsonl"),
])
def test_bad_input_fails_and_keeps_previous_tables(beir_dir, jrr_env, instance, tmp_path, damage,
                                                   expected):
    good = run_pipeline(str(beir_dir), preset="ci", select="corpus", echo=None, instance=instance)
    assert good.success
    bad = tmp_path / "toyset"
    for f in beir_dir.rglob("*"):
        if f.is_file():
            (bad / f.relative_to(beir_dir)).parent.mkdir(parents=True, exist_ok=True)
            (bad / f.relative_to(beir_dir)).write_bytes(f.read_bytes())
    damage(bad)
    outcome = run_pipeline(str(bad), preset="ci", select="corpus", echo=None, instance=instance)
    assert not outcome.success
    assert "DataFormatError" in outcome.failure and expected in outcome.failure, outcome.failure
    con = duckdb.connect(str(jrr_env / "warehouse.duckdb"), read_only=True)
    counts = [con.execute(f"select count(*) from {t}").fetchone()[0]
              for t in ("corpus", "queries", "qrels")]
    con.close()
    assert counts == [80, 60, 60]


def test_cli_rejects_missing_directory(jrr_env, tmp_path, capsys):
    from jrr_pipeline.cli import main

    assert main(["run", str(tmp_path / "nowhere"), "--preset", "ci"]) == 2
    assert "nowhere: no such dataset directory" in capsys.readouterr().err
