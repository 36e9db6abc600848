"""The whole asset graph through Dagster: materialize with checks, re-run, staleness, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, instance_for_test
from dagster._core.definitions.data_version import extract_data_version_from_entry

from jrr_pipeline.ops.lineage import model_lineage
from jrr_pipeline.ops.runner import run_pipeline
from jrr_pipeline.ops.staleness import stale_or_missing
from jrr_pipeline.pipeline import build_definitions

JOINT = {"joint_retriever", "joint_reranker", "faiss_index", "evaluation_report"}
ALL_ASSETS = {"corpus", "queries", "qrels", "bm25_index", "bm25_negatives", "warmup_retriever",
              "warmup_reranker", "dense_negatives", "denoised_candidates"} | JOINT
RERANKER_DOWNSTREAM = {"warmup_reranker", "denoised_candidates"} | JOINT


@pytest.fixture
def instance(jrr_env: Path):
    (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(jrr_env / "dagster")) as inst:
        yield inst


def test_full_graph_then_noop_then_one_stale_branch(beir_dir, jrr_env, instance, tmp_path,
                                                     monkeypatch, capsys):
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
    alone = report["systems"]["warmup_retriever+reranker_ce_only"]
    assert alone["R@10"] == pytest.approx(reranked["R@10"])  # same top-10 pool, other order
    print("toyset nDCG@10", bm25["nDCG@10"], dense["nDCG@10"], reranked["nDCG@10"])
    assert dense["nDCG@10"] > 0.3  # MiniLM after two ci steps still matches topic words
    assert 0.0 < reranked["nDCG@10"] <= 1.0
    assert reranked["R@20"] <= dense["R@20"] + 1e-9  # reranking top-10 cannot add documents
    joint = report["systems"]["joint_retriever"]
    assert 0.0 < joint["nDCG@10"] <= 1.0 and "joint_retriever+reranker" in report["systems"]
    counts = report["win_loss"]["joint_retriever"]
    assert counts["wins"] + counts["losses"] + counts["ties"] == report["num_queries"]
    assert report["win_loss_baseline"] == "warmup_retriever"
    assert first.checks["faiss_index:faiss_index_matches_corpus"]
    assert "| joint_retriever |" in (first.report_path.parent / "evaluation.md").read_text()
    assert (first.report_path.parent / "recall_curve.png").stat().st_size > 5000
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

    # candidate lists: positives first, ci list length 4, no labelled positive as a negative
    con = duckdb.connect(str(jrr_env / "warehouse.duckdb"), read_only=True)
    per_query = con.execute(
        "select query_id, sum(label), count(*) - sum(label) from candidates group by query_id").fetchall()
    leaks = con.execute(
        "select count(*) from candidates c join qrels q using (query_id, doc_id) "
        "where c.label = 0 and q.relevance > 0").fetchone()[0]
    sources = {r[0] for r in con.execute("select distinct source from candidates").fetchall()}
    con.close()
    assert len(per_query) == 40 and all(pos >= 1 and neg == 3 for _q, pos, neg in per_query)
    assert leaks == 0 and "qrels" in sources
    assert sources <= {"qrels"} | {f"{kind}:{src}" for kind in ("raw", "denoised", "pseudo_positive")
                                   for src in ("bm25", "dense", "bm25+dense")}
    assert first.checks["denoised_candidates:candidates_exclude_positives"]
    assert first.checks["denoised_candidates:candidates_list_length"]

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

    # one reranker setting changed: exactly the reranker and its downstream turn stale and run
    settings = {"warmup_reranker": {"lr": 3e-4}}
    status = stale_or_missing(build_definitions("ci", str(data), settings), instance)
    # Dagster flags the changed asset itself; its downstream turns stale once its new data version
    # exists, which the runner's stale-only rounds pick up within the same `jrr run`.
    assert {k.to_user_string() for k, s in status.items() if s != "FRESH"} == {"warmup_reranker"}
    dry = run_pipeline(str(data), preset="ci", echo=None, instance=instance, settings=settings,
                       dry_run=True)
    assert dry.stale == ["warmup_reranker"] and dry.materialized == []
    assert dry.downstream == sorted(RERANKER_DOWNSTREAM - {"warmup_reranker"})
    fourth = run_pipeline(str(data), preset="ci", echo=None, instance=instance, settings=settings)
    assert fourth.success, fourth.failure
    assert set(fourth.materialized) == RERANKER_DOWNSTREAM

    # AR2 instead of RocketQAv2: only the joint models and what reads them re-run; one MLflow
    # parent run with a nested run per iteration (the second one evaluated its index refresh)
    ar2 = run_pipeline(str(data), preset="ci", echo=None, instance=instance,
                       settings={**settings, "joint_models": {"method": "ar2"}})
    assert ar2.success, ar2.failure
    assert set(ar2.materialized) == JOINT
    ar2_report = json.loads(ar2.report_path.read_text())
    assert 0.0 < ar2_report["systems"]["joint_retriever"]["nDCG@10"] <= 1.0
    version = mlflow.MlflowClient().get_model_version("jrr-toyset-joint_retriever", "4")
    parent = mlflow.get_run(version.run_id)
    assert parent.data.tags["method"] == "ar2"
    assert parent.data.tags["dagster.asset_key"] == "joint_reranker,joint_retriever"
    assert "dagster.input_data_version.denoised_candidates" in parent.data.tags
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{version.run_id}'")
    assert sorted(c.data.tags["ar2.iteration"] for c in children) == ["0", "1"]
    refreshed = next(c for c in children if c.data.tags["ar2.iteration"] == "1")
    assert 0.0 <= refreshed.data.metrics["refresh.eval_nDCG_at_10"] <= 1.0
    assert "retriever.adversarial" in parent.data.metrics

    # lineage: registered model -> MLflow run -> negatives -> tables -> the dataset files
    uri = f"sqlite:///{jrr_env / 'mlflow.db'}"
    tree = model_lineage("jrr-toyset-warmup_retriever", uri, instance)
    text = "\n".join(tree.render())
    assert "jrr-toyset-warmup_retriever version 2" in text  # first run, then the edited query
    import re

    made_by = set(re.findall(r"dagster run: ([0-9a-f-]{36})", text.split("<- [asset]")[0]))
    assert made_by and all(instance.get_run_by_id(r) is not None for r in made_by)
    for asset in ("bm25_negatives", "corpus", "queries", "qrels", "dataset_files"):
        assert f"{asset} data version" in text, asset
    queries_sha = hashlib.sha256((data / "queries.jsonl").read_bytes()).hexdigest()
    assert f"file queries.jsonl: sha256 {queries_sha[:16]}" in text
    assert "not in this Dagster instance" not in text
    model_run = mlflow.get_run(tree.parents[0].title.split("(")[1].split(",")[0])
    (dataset_input,) = model_run.inputs.dataset_inputs
    observed = instance.get_latest_data_version_record(AssetKey("dataset_files"))
    assert dataset_input.dataset.digest == extract_data_version_from_entry(
        observed.event_log_entry).value
    with pytest.raises(ValueError, match="has no version 9"):
        model_lineage("jrr-toyset-warmup_retriever:9", uri, instance)

    # last: the CLI resets process-wide Dagster state (DAGSTER_HOME) that the runs above rely on
    from jrr_pipeline.cli import main

    assert main(["report", "--history"]) == 0
    assert (jrr_env / "reports" / "history_nDCG_at_10.png").stat().st_size > 5000
    capsys.readouterr()
    assert main(["lineage", "jrr-toyset-warmup_reranker:1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "[registered model] jrr-toyset-warmup_reranker version 1" in out
    assert f"dagster run: {first.run_id}" in out
    query_id = per_query[0][0]
    assert main(["candidates", query_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"query {query_id}: ") and out.count("\npos ") >= 1 and out.count("\nneg ") == 3
    assert main(["candidates", "no-such-query"]) == 2

    test_qid, positive = (data / "qrels" / "test.tsv").read_text().splitlines()[1].split("\t")[:2]
    query = next(json.loads(line)["text"] for line in (data / "queries.jsonl").read_text().splitlines()
                 if json.loads(line)["_id"] == test_qid)
    assert main(["search", query, "--dataset", "toyset", "--k", "20", "--rerank", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(answer["hits"]) == 20 and positive in [h["doc_id"] for h in answer["hits"]]
    assert set(answer["timings_ms"]) == {"encode_ms", "search_ms", "rerank_ms", "total_ms"}

    # lists longer than the retrieved pool: a warning with counts, not a failed run
    from dagster import DagsterInstance

    with DagsterInstance.get() as cli_instance:
        long_lists = run_pipeline(str(data), preset="ci", select="denoised_candidates", echo=None,
                                  instance=cli_instance,
                                  settings={"denoised_candidates": {"list_length": 30}})
    assert long_lists.success, long_lists.failure
    assert long_lists.checks["denoised_candidates:candidates_list_length"] is False
    assert long_lists.checks["denoised_candidates:candidates_exclude_positives"] is True


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


def test_dataset_without_train_qrels_fails_with_a_clear_error(beir_dir, jrr_env, instance, tmp_path):
    data = tmp_path / "testonly"
    for f in beir_dir.rglob("*"):
        if f.is_file() and f.name != "train.tsv":
            (data / f.relative_to(beir_dir)).parent.mkdir(parents=True, exist_ok=True)
            (data / f.relative_to(beir_dir)).write_bytes(f.read_bytes())
    built = run_pipeline(str(data), preset="ci", select="*bm25_index", echo=None, instance=instance)
    assert built.success
    outcome = run_pipeline(str(data), preset="ci", select="bm25_negatives", echo=None,
                           instance=instance)
    assert not outcome.success
    assert "no 'train' split (found: test)" in outcome.failure, outcome.failure
    assert "qrels/train.tsv" in outcome.failure
