"""A team's setup on a real PostgreSQL server (a throwaway cluster on 127.0.0.1): the ci-preset
graph through ``jrr run`` with the multiprocess executor, Dagster's runs and events and MLflow's
runs and registered models in PostgreSQL, the device pool keeping training steps apart within a
run and across runs, lineage from the shared stores, and a killed run marked failed.

The graph runs once per module (JRR_EXECUTOR=multiprocess, about 2 minutes on 2 cores); the
tests after it read the database. The last test adds runs, so it comes last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from jrr_pipeline.pipeline import build_definitions
from tests.integration.postgres import Cluster, postgres_cluster

pytestmark = pytest.mark.integration

JRR = str(Path(sys.executable).parent / "jrr")
REPO = Path(__file__).resolve().parents[2]
ASSETS = {"corpus", "queries", "qrels", "bm25_index", "bm25_negatives", "warmup_retriever",
          "warmup_reranker", "dense_negatives", "denoised_candidates", "joint_retriever",
          "joint_reranker", "faiss_index", "evaluation_report"}
MODELS = {"jrr-toyset-warmup_retriever", "jrr-toyset-warmup_reranker",
          "jrr-toyset-joint_retriever", "jrr-toyset-joint_reranker"}
BLOCKED = "Step blocked by limit for pool jrr_device"


@dataclass
class Team:
    """One shared PostgreSQL, a JRR_HOME and the environment every `jrr` command gets."""

    db: Cluster
    data: Path
    home: Path
    env: dict[str, str]

    def jrr(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([JRR, *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"jrr {' '.join(args)}: {proc.stdout[-3000:]}" \
                                     f"{proc.stderr[-5000:]}"
        return proc

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        """`jrr ...` in its own session (so SIGKILL reaches it and nothing else)."""
        with open(log, "w") as out:
            return subprocess.Popen([JRR, *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def team(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("team")
    data = Path(shutil.copytree(beir_dir, root / "toyset"))
    with postgres_cluster() as db:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DAGSTER_HOME", "MLFLOW_TRACKING_URI", "JRR_EXECUTOR"}}
        env.update(JRR_HOME=str(root / "home"), JRR_POSTGRES_URL=db.url, HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", JRR_LOCK_TIMEOUT_S="300")
        yield Team(db=db, data=data, home=root / "home", env=env)


@pytest.fixture(scope="module")
def graph(team: Team) -> dict:
    """The whole ci graph, one `jrr run` with a process per step, on PostgreSQL, its corpus
    index in two shards."""
    started = time.monotonic()
    proc = team.jrr("run", str(team.data), "--preset", "ci", "--quiet",
                    "--set", "faiss_index.shards=2",
                    JRR_EXECUTOR="multiprocess", JRR_MAX_CONCURRENT="2")
    seconds = time.monotonic() - started
    print(f"ci graph on PostgreSQL, multiprocess executor: {seconds:.0f}s")
    return {"seconds": seconds, "stdout": proc.stdout}


def test_dagster_runs_events_and_checks_are_in_postgres(team: Team, graph: dict):
    db = team.db
    assert "materialized 13 assets" in graph["stdout"]
    statuses = dict(db.sql("SELECT status, count(*) FROM runs GROUP BY status"))
    # the stale-only runner needs two rounds: the report waits for the joint index
    assert statuses == {"SUCCESS": 2}, statuses
    materialized = db.sql("SELECT asset_key FROM event_logs "
                          "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
    assert sorted(json.loads(k)[0] for (k,) in materialized) == sorted(ASSETS)
    observed = db.sql("SELECT count(*) FROM event_logs "
                      "WHERE dagster_event_type = 'ASSET_OBSERVATION'")
    assert observed == [(1,)]  # dataset_files
    checks = dict(db.sql("SELECT execution_status, count(*) FROM asset_check_executions "
                         "GROUP BY execution_status"))
    assert checks == {"SUCCEEDED": 10}, checks
    workers = db.sql("SELECT count(DISTINCT step_key) FROM event_logs "
                     "WHERE dagster_event_type = 'STEP_WORKER_STARTED'")
    assert workers[0][0] >= 13  # a process per step: the multiprocess executor ran them
    # nothing went to the embedded stores
    storage = team.home / "dagster" / "storage"
    assert not list(storage.glob("*.db")) and not (storage / "runs").exists()
    assert not (team.home / "mlflow.db").exists()
    assert "postgres_url" in (team.home / "dagster" / "dagster.yaml").read_text()


def test_sharded_corpus_index_serves_the_report(team: Team, graph: dict):
    index = team.home / "artifacts" / "toyset" / "faiss_index"
    assert sorted(p.name for p in index.glob("shard-*")) == ["shard-00000.faiss",
                                                             "shard-00001.faiss"]
    (metadata,) = team.db.sql("SELECT event FROM event_logs WHERE dagster_event_type = "
                              "'ASSET_MATERIALIZATION' AND asset_key = %s",
                              (json.dumps(["faiss_index"]),))[0]
    entries = {entry["label"]: entry["entry_data"]
               for entry in json.loads(metadata)["dagster_event"]["event_specific_data"]
               ["materialization"]["metadata_entries"]}
    assert entries["shards"]["value"] == 2
    report = json.loads((team.home / "reports" / "toyset" / "evaluation.json").read_text())
    assert 0.0 < report["systems"]["joint_retriever"]["nDCG@10"] <= 1.0  # searched the shards


def test_mlflow_runs_and_registered_models_are_in_postgres(team: Team, graph: dict):
    db = team.db
    runs = dict(db.sql("SELECT status, count(*) FROM mlflow.runs GROUP BY status"))
    # warm-up retriever, warm-up reranker, denoising, joint training, evaluation report
    assert runs == {"FINISHED": 5}, runs
    models = {name for (name,) in db.sql("SELECT name FROM mlflow.registered_models")}
    assert models == MODELS
    versions = db.sql("SELECT name, version, run_id FROM mlflow.model_versions")
    assert len(versions) == 4 and {v for _, v, _ in versions} == {1}
    run_ids = {r for (r,) in db.sql("SELECT run_uuid FROM mlflow.runs")}
    assert {run_id for _, _, run_id in versions} <= run_ids
    tags = db.sql("SELECT count(*) FROM mlflow.tags WHERE key = 'dagster.run_id' AND value IN "
                  "(SELECT run_id FROM public.runs)")
    assert tags == [(5,)]  # every MLflow run names a Dagster run stored beside it


def test_device_pool_keeps_steps_apart_in_the_multiprocess_run(team: Team, graph: dict):
    rows = team.db.sql("SELECT step_key, dagster_event_type, timestamp FROM event_logs "
                       "WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') "
                       "ORDER BY id")
    spans: dict[str, list] = {}
    for step, kind, at in rows:
        spans.setdefault(step, [None, None])[kind == "STEP_SUCCESS"] = at
    defs = build_definitions("ci", str(team.data))
    device = {spec.key.to_user_string() for a in defs.assets if getattr(a, "op", None)
              and a.op.pool == "jrr_device" for spec in a.specs}
    device_steps = sorted((spans[s] for s in spans if s in device or s == "joint_models"),
                          key=lambda span: span[0])
    assert len(device_steps) >= 6
    for before, after in zip(device_steps, device_steps[1:], strict=False):
        assert before[1] <= after[0], (before, after)  # one device step at a time
    # the two warm-ups are independent: without the pool they would have overlapped
    blocked = team.db.sql("SELECT step_key FROM event_logs WHERE event LIKE %s",
                          (f"%{BLOCKED}%",))
    assert {"warmup_retriever", "warmup_reranker"} & {s for (s,) in blocked}
    # Side by side: the executor had two step processes alive at once (from launching a worker to
    # its step's success; the steps themselves are short, so their own windows rarely touch).
    alive: dict[str, list] = {}
    for step, kind, at in team.db.sql(
            "SELECT step_key, dagster_event_type, timestamp FROM event_logs WHERE "
            "dagster_event_type IN ('STEP_WORKER_STARTING', 'STEP_SUCCESS') ORDER BY id"):
        alive.setdefault(step, [None, None])[kind == "STEP_SUCCESS"] = at
    ordered = sorted(((step, span) for step, span in alive.items() if None not in span),
                     key=lambda item: item[1][0])
    assert len(ordered) >= 13  # the steps that ran in worker processes
    overlapping = [(a, b) for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:],
                                                                        strict=False)
                   if a_end > b_start]
    assert overlapping, [(step, str(start), str(end)) for step, (start, end) in ordered]


def test_lineage_walks_a_model_back_to_its_files_from_postgres(team: Team, graph: dict):
    text = team.jrr("lineage", "jrr-toyset-joint_retriever").stdout
    assert "jrr-toyset-joint_retriever version 1" in text
    for asset in ("denoised_candidates", "corpus", "dataset_files"):
        assert f"{asset} data version" in text, asset
    corpus_sha = hashlib.sha256((team.data / "corpus.jsonl").read_bytes()).hexdigest()
    assert f"file corpus.jsonl: sha256 {corpus_sha[:16]}" in text
    assert "not in this Dagster instance" not in text


def test_doctor_names_the_postgres_stores(team: Team, graph: dict):
    out = team.jrr("doctor", "--check").stdout
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "postgresql+psycopg2://jrr@127.0.0.1" in lines["dagster storage"]
    assert "ok: 2 runs" in lines["dagster storage"]
    assert "search_path%3Dmlflow" in lines["mlflow backend"]
    assert "ok: 5 runs, 4 registered models" in lines["mlflow backend"]
    assert "[JRR_POSTGRES_URL]" in lines["mlflow backend"]


def test_deploy_instance_config_opens_on_postgres(team: Team, graph: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    """deploy/dagster.yaml's storage and concurrency (not its Docker run launcher, which needs
    dagster-docker and a Docker engine) open the same PostgreSQL instance jrr wrote to."""
    import yaml
    from dagster import DagsterInstance

    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    assert config.pop("run_launcher")["class"] == "DockerRunLauncher"
    config["storage"]["postgres"]["postgres_db"]["port"] = team.db.port  # the test cluster's
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": "jrr",
                        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
                        "DAGSTER_PG_DB": "jrr"}.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_runs_count() == 2  # the graph's runs, written through jrr
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        info = instance.event_log_storage.get_concurrency_info("jrr_device")
        assert info.slot_count == 1


def _wait_for(query: str, params: tuple, db: Cluster, proc: subprocess.Popen, log: Path,
              timeout: float = 180) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.sql(query, params)
        if rows:
            return rows
        assert proc.poll() is None, f"jrr exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {query} {params}:\n{log.read_text()[-3000:]}")


def test_killed_run_is_failed_and_the_waiting_run_gets_the_device(team: Team, graph: dict,
                                                                  tmp_path: Path):
    """Terminal A trains the reranker; terminal B's retriever step waits on the device pool in
    PostgreSQL; A is killed (SIGKILL): its run stays STARTED holding the slot until the next
    `jrr` reaps it; then B runs. The reranker's artifact and model registry stay as they were."""
    db = team.db
    artifact = team.home / "artifacts" / "toyset" / "warmup_reranker"
    before = {p.name: p.read_bytes() for p in artifact.iterdir() if p.is_file()}
    known = {r for (r,) in db.sql("SELECT run_id FROM runs")}
    logs = tmp_path / "a.log", tmp_path / "b.log"
    # a long training (500 steps), so A is still training when it is killed
    a = team.start("run", str(team.data), "--preset", "ci", "--all", "--select",
                   "warmup_reranker", "--set", "warmup_reranker.max_steps=500", log=logs[0])
    b = None
    try:
        step = "SELECT run_id FROM concurrency_slots WHERE concurrency_key = 'jrr_device' " \
               "AND step_key = %s AND NOT deleted AND run_id IS NOT NULL"
        (run_a,) = _wait_for(step, ("warmup_reranker",), db, a, logs[0])[0]
        assert run_a not in known
        b = team.start("run", str(team.data), "--preset", "ci", "--all",
                       "--select", "warmup_retriever", log=logs[1])
        (run_b,) = _wait_for("SELECT run_id FROM event_logs WHERE step_key = 'warmup_retriever' "
                             "AND event LIKE %s AND run_id <> ALL(%s)",
                             (f"%{BLOCKED}%", list(known)), db, b, logs[1])[0]
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
        time.sleep(3)  # B keeps waiting: the dead run still holds the only device slot
        assert b.poll() is None
        assert db.sql("SELECT status FROM runs WHERE run_id = %s", (run_a,)) == [("STARTED",)]
        assert not db.sql("SELECT 1 FROM event_logs WHERE run_id = %s "
                          "AND dagster_event_type = 'STEP_START'", (run_b,))
        reaped_at = time.time()
        reap = team.jrr("run", str(team.data), "--preset", "ci", "--dry-run")
        assert f"run {run_a} was killed without finishing" in reap.stdout
        assert b.wait(timeout=300) == 0, logs[1].read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    statuses = dict(db.sql("SELECT run_id, status FROM runs WHERE run_id IN (%s, %s)",
                           (run_a, run_b)))
    assert statuses == {run_a: "FAILURE", run_b: "SUCCESS"}
    (started_b,) = db.sql("SELECT extract(epoch FROM timestamp) FROM event_logs "
                          "WHERE run_id = %s AND dagster_event_type = 'STEP_START'", (run_b,))[0]
    assert float(started_b) >= reaped_at - 1  # B started only once the dead run's slot was freed
    assert not db.sql("SELECT 1 FROM concurrency_slots WHERE run_id IS NOT NULL AND NOT deleted")
    # nothing half-written: the reranker's folder and registry are the previous run's
    assert {p.name: p.read_bytes() for p in artifact.iterdir() if p.is_file()} == before
    assert not list(artifact.parent.glob(".warmup_reranker.*"))
    versions = db.sql("SELECT count(*) FROM mlflow.model_versions "
                      "WHERE name = 'jrr-toyset-warmup_reranker'")
    assert versions == [(1,)]
