"""The generation stage through Dagster: a dataset with no train qrels runs end to end on
generated queries (labels none), and augment mode mines negatives for labelled and generated
queries alike. Each mode's graph is materialized once per module (ci preset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import AssetKey, instance_for_test
from mlflow import MlflowClient

from jrr_pipeline.assets.generation import ROUNDS_FILE
from jrr_pipeline.ops.runner import RunOutcome, run_pipeline
from jrr_pipeline.pipeline import build_definitions
from tests.conftest import isolate_home

GENERATION = {"query_generator", "generated_queries"}
TRAINING = {"bm25_negatives", "warmup_retriever", "warmup_reranker", "dense_negatives",
            "denoised_candidates", "joint_retriever", "joint_reranker"}
ALL = {"corpus", "queries", "qrels", "bm25_index", "faiss_index", "evaluation_report"} \
    | GENERATION | TRAINING
NONE = {"generation": {"labels": "none"}}


class Home:
    def __init__(self, data: Path, home: Path, instance) -> None:
        self.data, self.home, self.instance = data, home, instance

    def run(self, settings: dict, **kwargs) -> RunOutcome:
        return run_pipeline(str(self.data), preset="ci", echo=None, instance=self.instance,
                            settings=settings, **kwargs)

    def sql(self, query: str) -> list[tuple]:
        con = duckdb.connect(str(self.home / "warehouse.duckdb"), read_only=True)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()


def _home(beir_dir: Path, root: Path, keep_train: bool):
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = isolate_home(root, monkeypatch)
        data = Path(shutil.copytree(beir_dir, root / "toyset"))
        if not keep_train:
            (data / "qrels" / "train.tsv").unlink()
        (home / "dagster").mkdir(parents=True)
        with instance_for_test(temp_dir=str(home / "dagster")) as instance:
            yield Home(data, home, instance)


@pytest.fixture(scope="module")
def unlabelled(beir_dir, tmp_path_factory):
    """A corpus with test queries and no train qrels at all."""
    yield from _home(beir_dir, tmp_path_factory.mktemp("unlabelled"), keep_train=False)


@pytest.fixture(scope="module")
def zero_label(unlabelled) -> RunOutcome:
    outcome = unlabelled.run(NONE)
    if not outcome.success:
        pytest.fail(f"the labels = none run failed: {outcome.failure}")
    return outcome


def test_only_mode_has_no_generation_stage_and_none_mode_feeds_training():
    only = build_definitions("ci", "", {}).resolve_asset_graph()
    assert not any(only.has(AssetKey(a)) for a in GENERATION)
    none = build_definitions("ci", "", NONE).resolve_asset_graph()
    for asset in TRAINING:
        assert AssetKey("generated_queries") in none.get(AssetKey(asset)).parent_keys, asset
    assert none.get(AssetKey("query_generator")).parent_keys == {AssetKey("bm25_index"),
                                                                 AssetKey("corpus")}


def test_zero_label_graph_materializes_with_passing_checks(zero_label):
    assert set(zero_label.materialized) >= ALL
    for check in ("generated_queries_not_empty", "generated_queries_no_long_copies",
                  "generated_queries_few_duplicates", "generated_queries_cover_documents"):
        assert zero_label.checks[f"generated_queries:{check}"], check
    assert all(zero_label.checks.values()), zero_label.checks
    report = json.loads(zero_label.report_path.read_text())
    assert report["labels"] == "none" and "- labels: none" in (
        zero_label.report_path.parent / "evaluation.md").read_text()
    assert 0.0 < report["systems"]["joint_retriever"]["nDCG@10"] <= 1.0


def test_generated_queries_table_holds_the_game_and_the_training_queries(unlabelled, zero_label):
    # ci: 2 rounds x 6 documents x 2 queries, then 30 documents x 1 training query
    per_round = dict(unlabelled.sql("select round, count(*) from generated_queries group by 1"))
    assert per_round == {0: 12, 1: 12, -1: 30}
    parts = unlabelled.sql("select min(relevance), max(relevance), count(*) from "
                           "generated_queries where round >= 0 and retriever_loss > 0")
    assert 0.0 <= parts[0][0] <= parts[0][1] <= 1.0 and parts[0][2] == 24
    assert unlabelled.sql("select count(distinct generator_version) from generated_queries") == [(1,)]
    # the training stages read generated queries only: every mined query is a final-set one
    mined = unlabelled.sql("select distinct query_id from negatives")
    assert len(mined) == 30 and all(q.startswith("gen-final-") for (q,) in mined)
    listed = unlabelled.sql("select count(distinct query_id) from candidates")[0][0]
    assert listed == 30


def test_the_game_is_in_mlflow_round_by_round(unlabelled, zero_label):
    client = MlflowClient(f"sqlite:///{unlabelled.home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "attributes.run_name = 'query_generator-toyset'")
    assert len(runs) == 1
    run = runs[0]
    rewards = client.get_metric_history(run.info.run_id, "reward")
    assert [m.step for m in rewards] == [0, 1]
    for name in ("reward_retriever_loss", "reward_relevance", "distinct_2", "duplicate_rate"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    files = {f.path for f in client.list_artifacts(run.info.run_id, "samples")}
    assert files == {"samples/round_000.md", "samples/round_001.md"}
    versions = client.search_model_versions("name = 'jrr-toyset-query_generator'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id


def test_jrr_generated_prints_queries_beside_their_documents(unlabelled, zero_label, capsys,
                                                             monkeypatch):
    from jrr_pipeline.cli import main

    monkeypatch.setenv("JRR_HOME", str(unlabelled.home))
    assert main(["generated", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("[final] gen-final-") == 3 and out.count("  doc ") == 3
    doc = unlabelled.sql("select doc_id from generated_queries where round = 0 limit 1")[0][0]
    assert main(["generated", "--doc", doc, "--round", "0"]) == 0
    out = capsys.readouterr().out
    assert f"doc {doc}:" in out and "[round 0]" in out and "reward" in out
    assert main(["generated", "--doc", "no-such-doc"]) == 2


def test_rerun_without_changes_materializes_nothing(unlabelled, zero_label):
    again = unlabelled.run(NONE)
    assert again.success and again.materialized == []


def test_without_train_qrels_only_mode_fails_and_says_what_to_do(unlabelled, zero_label):
    outcome = unlabelled.run({}, select="*bm25_negatives")
    assert not outcome.success and "--labels none" in outcome.failure


@pytest.fixture(scope="module")
def augmented(beir_dir, tmp_path_factory):
    for home in _home(beir_dir, tmp_path_factory.mktemp("augmented"), keep_train=True):
        outcome = home.run({"generation": {"labels": "augment", "augment_weight": 0.5}},
                           select="*bm25_negatives")
        if not outcome.success:
            pytest.fail(f"the labels = augment run failed: {outcome.failure}")
        yield home


def test_augment_mode_mines_labelled_and_generated_queries(augmented):
    mined = [q for (q,) in augmented.sql("select distinct query_id from negatives")]
    labelled = [q for q in mined if not q.startswith("gen-")]
    generated = [q for q in mined if q.startswith("gen-final-")]
    # 36 labelled train queries (4 of the 40 carved into dev); at most 0.5 generated per labelled
    assert len(labelled) == 36 and len(generated) == 18
    assert augmented.sql("select count(*) from qrels where query_id like 'gen-%'") == [(0,)]


def test_a_run_killed_in_the_middle_of_a_round_resumes_at_that_round(beir_dir, tmp_path):
    from jrr_pipeline.ml.generation.game import GenerationGame

    real_round = GenerationGame.play_round
    played: list[int] = []
    crash = {"armed": True}

    def play_round(self, r):
        played.append(r)
        if r == 1 and crash["armed"]:
            crash["armed"] = False
            raise RuntimeError("killed in the middle of round 1")
        return real_round(self, r)

    for home in _home(beir_dir, tmp_path, keep_train=False):
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(GenerationGame, "play_round", play_round)
            killed = home.run(NONE, select="*query_generator")
            assert not killed.success and "round 1" in (killed.failure or "")
            assert not (home.home / "artifacts" / "toyset" / "query_generator").exists()
            resumed = home.run(NONE, select="*query_generator")
        assert resumed.success, resumed.failure
        # round 0 was saved before the kill and is not played again; round 1 starts over
        assert played == [0, 1, 1]
        generator = home.home / "artifacts" / "toyset" / "query_generator"
        assert (generator / "generator").is_dir()
        rounds = pl.read_parquet(generator / ROUNDS_FILE)["round"].unique().sort().to_list()
        assert rounds == [0, 1]
