"""The whole asset graph through Dagster: materialize with checks, re-run, staleness, bad input.

The ci-preset graph is materialized once per module; the tests after it check one thing each.
Later stages change that state (an edited query, changed settings), so each stage is a module-scoped
fixture that builds on the one before, and tests come in stage order: a test asks for the stage it
checks, and runs before any later stage has been built. When a stage's run fails, the tests that
build on it error naming that stage.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test
from mlflow import MlflowClient

from jrr_pipeline.dagster_compat import extract_data_version_from_entry
from jrr_pipeline.ops.lineage import model_lineage
from jrr_pipeline.ops.runner import RunOutcome, run_pipeline
from jrr_pipeline.ops.staleness import stale_or_missing
from jrr_pipeline.pipeline import build_definitions
from tests.conftest import isolate_home

JOINT = {"joint_retriever", "joint_reranker", "faiss_index", "evaluation_report"}
ALL_ASSETS = {"corpus", "queries", "qrels", "bm25_index", "bm25_negatives", "warmup_retriever",
              "warmup_reranker", "dense_negatives", "denoised_candidates"} | JOINT
RERANKER_DOWNSTREAM = {"warmup_reranker", "denoised_candidates"} | JOINT
RERANKER_SETTING = {"warmup_reranker": {"lr": 3e-4}}
AR2_SETTINGS = {**RERANKER_SETTING, "joint_models": {"method": "ar2"}}


@pytest.fixture
def instance(jrr_env: Path):
    (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(jrr_env / "dagster")) as inst:
        yield inst


@dataclass
class Graph:
    """One module's pipeline home: the dataset copy it edits, JRR_HOME, the Dagster instance."""

    data: Path
    home: Path
    cwd: Path
    instance: DagsterInstance

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def run(self, **kwargs) -> RunOutcome:
        return run_pipeline(str(self.data), preset="ci", echo=None, instance=self.instance, **kwargs)


def _built(outcome: RunOutcome, stage: str) -> RunOutcome:
    if not outcome.success:
        pytest.fail(f"the {stage} run this test builds on failed: {outcome.failure}")
    return outcome


@pytest.fixture(scope="module")
def graph(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("graph")
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = isolate_home(root, monkeypatch)
        cwd = root / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)  # nothing may be written to the current directory
        data = Path(shutil.copytree(beir_dir, root / "toyset"))
        (home / "dagster").mkdir(parents=True)
        with instance_for_test(temp_dir=str(home / "dagster")) as inst:
            yield Graph(data=data, home=home, cwd=cwd, instance=inst)


@pytest.fixture(scope="module")
def first(graph: Graph) -> RunOutcome:
    """Stage 1: the whole graph, materialized from nothing."""
    return _built(graph.run(), "first (full graph)")


@pytest.fixture(scope="module")
def edited_query(graph: Graph, first: RunOutcome) -> RunOutcome:
    """Stage 2: one query's text edited, then `jrr run` again."""
    lines = (graph.data / "queries.jsonl").read_text().splitlines()
    first_query = json.loads(lines[0])
    first_query["text"] += " aggregate"
    lines[0] = json.dumps(first_query)
    (graph.data / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return _built(graph.run(), "edited-query")


@pytest.fixture(scope="module")
def reranker_setting(graph: Graph, edited_query: RunOutcome) -> RunOutcome:
    """Stage 3: one warmup_reranker setting changed."""
    return _built(graph.run(settings=RERANKER_SETTING), "changed reranker setting")


@pytest.fixture(scope="module")
def ar2(graph: Graph, reranker_setting: RunOutcome) -> RunOutcome:
    """Stage 4: AR2 instead of RocketQAv2 for the joint models."""
    return _built(graph.run(settings=AR2_SETTINGS), "AR2")


# ---------------------------------------------------------------- stage 1: the first run


def test_full_graph_materializes_with_passing_checks(first):
    assert first.success, first.failure
    assert set(first.materialized) == ALL_ASSETS
    assert first.checks and all(first.checks.values()), first.checks
    assert "qrels:qrels_no_split_leak" in first.checks
    assert first.checks["faiss_index:faiss_index_matches_corpus"]
    assert first.checks["denoised_candidates:candidates_exclude_positives"]
    assert first.checks["denoised_candidates:candidates_list_length"]


def test_report_has_every_system_with_sane_metrics(first):
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
    assert "| joint_retriever |" in (first.report_path.parent / "evaluation.md").read_text()
    assert (first.report_path.parent / "recall_curve.png").stat().st_size > 5000
    assert (first.report_path.parent / "evaluation.md").read_text().count("bm25") >= 1
    assert any(p.suffix == ".png" for p in first.report_path.parent.iterdir())


def _reranked_rows_keep_first_stage_recall(systems: dict) -> None:
    reranked = [name for name in systems if "+reranker" in name]
    assert len(reranked) == 4, sorted(systems)  # warm-up and joint, fused and reranker alone
    for name in reranked:
        first_stage = name.split("+reranker")[0]
        assert systems[name]["R@100"] == systems[first_stage]["R@100"], name


def _dev_queries(home: Path) -> int:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    count = con.execute("select count(distinct query_id) from qrels where split = 'dev'").fetchone()[0]
    con.close()
    return count


def test_report_selection_block_and_complete_reranked_runs(graph, first):
    """The selection block names the dev split the warehouse holds (or says there is none), and
    every +reranker row keeps its first stage's tail: the same R@100, on every reported split."""
    report = json.loads(first.report_path.read_text())
    _reranked_rows_keep_first_stage_recall(report["systems"])
    selection, dev = report["selection"], _dev_queries(graph.home)
    assert selection["queries"] == dev
    markdown = (first.report_path.parent / "evaluation.md").read_text()
    if dev:
        assert selection["split"] == "dev" and selection["origin"] in ("carved from train", "dataset")
        assert set(report["dev_systems"]) == set(report["systems"])
        _reranked_rows_keep_first_stage_recall(report["dev_systems"])
        assert "### dev figures" in markdown
    else:
        assert selection["split"] is None and "no dev split" in selection["note"]
        assert "dev_systems" not in report and "No selection split: no dev split" in markdown


def test_warehouse_tables(graph, first):
    bm25 = json.loads(first.report_path.read_text())["systems"]["bm25"]
    con = duckdb.connect(str(graph.home / "warehouse.duckdb"), read_only=True)
    assert con.execute("select count(*) from corpus").fetchone()[0] == 80
    # 40 train queries, 4 of them carved into dev (ci preset): dev is never mined or trained on
    assert con.execute("select count(distinct query_id) from negatives").fetchone()[0] == 36
    assert con.execute("select max(rank) from negatives").fetchone()[0] <= 20  # ci preset top_k
    stored = con.execute(
        "select value from metrics where system='bm25' and measure='nDCG@10' and split='test'").fetchall()
    con.close()
    assert stored == [(pytest.approx(bm25["nDCG@10"]),)]


def test_candidate_lists(graph, first):
    """Positives first, ci list length 4, no labelled positive as a negative."""
    con = duckdb.connect(str(graph.home / "warehouse.duckdb"), read_only=True)
    per_query = con.execute(
        "select query_id, sum(label), count(*) - sum(label) from candidates group by query_id").fetchall()
    leaks = con.execute(
        "select count(*) from candidates c join qrels q using (query_id, doc_id) "
        "where c.label = 0 and q.relevance > 0").fetchone()[0]
    sources = {r[0] for r in con.execute("select distinct source from candidates").fetchall()}
    con.close()
    assert len(per_query) == 36 and all(pos >= 1 and neg == 3 for _q, pos, neg in per_query)
    assert leaks == 0 and "qrels" in sources
    assert sources <= {"qrels"} | {f"{kind}:{src}" for kind in ("raw", "denoised", "pseudo_positive")
                                   for src in ("bm25", "dense", "bm25+dense")}


def test_mlflow_run_holds_the_report_metrics(graph, first):
    report = json.loads(first.report_path.read_text())
    run = MlflowClient(graph.mlflow_uri).get_run(report["mlflow_run_id"])
    assert run.data.metrics["bm25.nDCG_at_10"] == pytest.approx(report["systems"]["bm25"]["nDCG@10"])
    assert run.data.tags["dagster.run_id"] == first.run_id


def test_nothing_written_to_the_working_directory(graph, first):
    assert list(graph.cwd.iterdir()) == []


def test_rerun_without_changes_materializes_nothing(graph, first):
    again = graph.run()
    assert again.success and again.materialized == []
    assert set(again.fresh) == ALL_ASSETS


# ------------------------------------------------------------- stage 2: one query edited


def test_edited_query_reruns_its_branch_only(edited_query):
    """Only the query-dependent branch is stale; the BM25 index stays fresh."""
    assert edited_query.success, edited_query.failure
    assert set(edited_query.materialized) == ALL_ASSETS - {"bm25_index"}


def test_lineage_from_registered_model_to_dataset_files(graph, first, edited_query):
    """Registered model -> MLflow run -> negatives -> tables -> the dataset files."""
    instance = graph.instance
    tree = model_lineage("jrr-toyset-warmup_retriever", graph.mlflow_uri, instance)
    text = "\n".join(tree.render())
    assert "jrr-toyset-warmup_retriever version 2" in text  # first run, then the edited query
    made_by = set(re.findall(r"dagster run: ([0-9a-f-]{36})", text.split("<- [asset]")[0]))
    assert made_by and all(instance.get_run_by_id(r) is not None for r in made_by)
    for asset in ("bm25_negatives", "corpus", "queries", "qrels", "dataset_files"):
        assert f"{asset} data version" in text, asset
    queries_sha = hashlib.sha256((graph.data / "queries.jsonl").read_bytes()).hexdigest()
    assert f"file queries.jsonl: sha256 {queries_sha[:16]}" in text
    assert "not in this Dagster instance" not in text
    model_run = MlflowClient(graph.mlflow_uri).get_run(
        tree.parents[0].title.split("(")[1].split(",")[0])
    (dataset_input,) = model_run.inputs.dataset_inputs
    observed = instance.get_latest_data_version_record(AssetKey("dataset_files"))
    assert dataset_input.dataset.digest == extract_data_version_from_entry(
        observed.event_log_entry).value
    with pytest.raises(ValueError, match="has no version 9"):
        model_lineage("jrr-toyset-warmup_retriever:9", graph.mlflow_uri, instance)


# -------------------------------------------------- stage 3: one reranker setting changed


def test_reranker_setting_stales_only_the_reranker(graph, edited_query):
    """Dagster flags the changed asset itself; its downstream turns stale once its new data version
    exists, which the runner's stale-only rounds pick up within the same `jrr run`."""
    status = stale_or_missing(build_definitions("ci", str(graph.data), RERANKER_SETTING),
                              graph.instance)
    assert {k.to_user_string() for k, s in status.items() if s != "FRESH"} == {"warmup_reranker"}
    dry = graph.run(settings=RERANKER_SETTING, dry_run=True)
    assert dry.stale == ["warmup_reranker"] and dry.materialized == []
    assert dry.downstream == sorted(RERANKER_DOWNSTREAM - {"warmup_reranker"})


def test_reranker_setting_reruns_exactly_its_downstream(reranker_setting):
    assert reranker_setting.success, reranker_setting.failure
    assert set(reranker_setting.materialized) == RERANKER_DOWNSTREAM


# ------------------------------------------------------------------ stage 4: AR2 instead


def test_ar2_reruns_the_joint_models_with_nested_mlflow_runs(graph, ar2):
    """Only the joint models and what reads them re-run; one MLflow parent run with a nested run
    per iteration (the second one evaluated its index refresh)."""
    assert ar2.success, ar2.failure
    assert set(ar2.materialized) == JOINT
    ar2_report = json.loads(ar2.report_path.read_text())
    assert 0.0 < ar2_report["systems"]["joint_retriever"]["nDCG@10"] <= 1.0
    client = MlflowClient(graph.mlflow_uri)
    version = client.get_model_version("jrr-toyset-joint_retriever", "4")
    parent = client.get_run(version.run_id)
    assert parent.data.tags["method"] == "ar2"
    assert parent.data.tags["dagster.asset_key"] == "joint_reranker,joint_retriever"
    assert "dagster.input_data_version.denoised_candidates" in parent.data.tags
    children = client.search_runs(experiment_ids=[parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{version.run_id}'")
    assert sorted(c.data.tags["ar2.iteration"] for c in children) == ["0", "1"]
    refreshed = next(c for c in children if c.data.tags["ar2.iteration"] == "1")
    assert 0.0 <= refreshed.data.metrics["refresh.eval_nDCG_at_10"] <= 1.0
    assert "retriever.adversarial" in parent.data.metrics


def test_cli_report_history(graph, ar2):
    from jrr_pipeline.cli import main

    assert main(["report", "--history"]) == 0
    assert (graph.home / "reports" / "history_nDCG_at_10.png").stat().st_size > 5000


def test_cli_lineage(graph, first, ar2, capsys):
    from jrr_pipeline.cli import main

    assert main(["lineage", "jrr-toyset-warmup_reranker:1", "--tracking-uri", graph.mlflow_uri]) == 0
    out = capsys.readouterr().out
    assert "[registered model] jrr-toyset-warmup_reranker version 1" in out
    assert f"dagster run: {first.run_id}" in out


def test_cli_candidates(graph, ar2, capsys):
    from jrr_pipeline.cli import main

    con = duckdb.connect(str(graph.home / "warehouse.duckdb"), read_only=True)
    query_id = con.execute("select min(query_id) from candidates").fetchone()[0]
    con.close()
    assert main(["candidates", query_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"query {query_id}: ") and out.count("\npos ") >= 1 and out.count("\nneg ") == 3
    assert main(["candidates", "no-such-query"]) == 2


def test_cli_search_finds_the_positive(graph, ar2, capsys):
    from jrr_pipeline.cli import main

    test_qid, positive = (graph.data / "qrels" / "test.tsv").read_text().splitlines()[1].split("\t")[:2]
    query = next(json.loads(line)["text"] for line in (graph.data / "queries.jsonl").read_text().splitlines()
                 if json.loads(line)["_id"] == test_qid)
    assert main(["search", query, "--dataset", "toyset", "--k", "20", "--rerank", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(answer["hits"]) == 20 and positive in [h["doc_id"] for h in answer["hits"]]
    assert set(answer["timings_ms"]) == {"encode_ms", "search_ms", "rerank_ms", "total_ms"}


def test_lists_longer_than_the_pool_warn_instead_of_failing(graph, ar2):
    """Last: it rewrites the candidates table. Runs on the instance `jrr` itself opens."""
    from jrr_pipeline.resources.home import configure_environment

    configure_environment()  # what every `jrr` command does first: DAGSTER_HOME and its dagster.yaml
    with DagsterInstance.get() as cli_instance:
        long_lists = run_pipeline(str(graph.data), preset="ci", select="denoised_candidates", echo=None,
                                  instance=cli_instance,
                                  settings={"denoised_candidates": {"list_length": 30}})
    assert long_lists.success, long_lists.failure
    assert long_lists.checks["denoised_candidates:candidates_list_length"] is False
    assert long_lists.checks["denoised_candidates:candidates_exclude_positives"] is True


def test_report_reads_the_dev_split_and_its_origin(graph, ar2):
    """Last with the list test: it moves ten more train queries to the dev split in the warehouse
    and records a qrels materialization whose metadata says dev was carved from train, as the
    qrels asset does when a dataset has no dev split. The report then scores every system on test and
    on dev, and stores and logs both. Reranking only the top-1 keeps every first-stage document
    in place, so each +reranker row must equal its first stage's row (a run cut to the rerank
    depth would have R@100 = R@1)."""
    from dagster import AssetMaterialization

    con = duckdb.connect(str(graph.home / "warehouse.duckdb"))
    con.execute("update qrels set split = 'dev' where query_id in (select distinct query_id "
                "from qrels where split = 'train' order by query_id limit 10)")
    dev_queries = con.execute("select count(distinct query_id) from qrels "
                              "where split = 'dev'").fetchone()[0]
    con.close()
    assert dev_queries >= 10  # the ten moved plus the qrels asset's own carve
    graph.instance.report_runless_asset_event(AssetMaterialization(
        asset_key="qrels", metadata={"dev_origin": "carved from train"}))
    outcome = graph.run(select="evaluation_report", stale_only=False,
                        settings={"evaluation_report": {"rerank_depth": 1}})
    assert outcome.success, outcome.failure
    assert outcome.materialized == ["evaluation_report"]
    report = json.loads(outcome.report_path.read_text())
    assert report["selection"] == {"split": "dev", "origin": "carved from train",
                                   "queries": dev_queries}
    assert report["split"] == "test" and report["num_queries"] == 20 and report["rerank_depth"] == 1
    assert set(report["dev_systems"]) == set(report["systems"])
    for systems in (report["systems"], report["dev_systems"]):
        _reranked_rows_keep_first_stage_recall(systems)
        for name in [n for n in systems if "+reranker" in n]:
            assert systems[name] == systems[name.split("+reranker")[0]], name
    markdown = (outcome.report_path.parent / "evaluation.md").read_text()
    assert markdown.index("### test figures") < markdown.index("### dev figures")
    assert f"chosen on `dev` (carved from train, {dev_queries} queries)" in markdown

    con = duckdb.connect(str(graph.home / "warehouse.duckdb"), read_only=True)
    stored = dict(con.execute(
        "select split, value from metrics where run_id = ? and system = 'bm25' and "
        "measure = 'nDCG@10'", [report["mlflow_run_id"]]).fetchall())
    con.close()
    assert stored == {"test": pytest.approx(report["systems"]["bm25"]["nDCG@10"]),
                      "dev": pytest.approx(report["dev_systems"]["bm25"]["nDCG@10"])}
    metrics = MlflowClient(graph.mlflow_uri).get_run(report["mlflow_run_id"]).data.metrics
    assert metrics["dev.joint_retriever_plus_reranker.R_at_100"] == pytest.approx(
        report["dev_systems"]["joint_retriever+reranker"]["R@100"])
    assert metrics["bm25.nDCG_at_10"] == pytest.approx(report["systems"]["bm25"]["nDCG@10"])


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
    assert outcome.failure.startswith(str(bad)) and expected in outcome.failure, outcome.failure
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
