"""Real ``jrr run`` processes killed with SIGKILL, run side by side, or out of file space.

- SIGKILL at four points of one pipeline (data step, warm-up training after a checkpoint, index
  build, report), each followed by the next ``jrr run``: the last one's report equals the
  uninterrupted run's (the session's ``full_run``).
- SIGKILL while a big data write holds the warehouse: the previous tables stay.
- Two ``jrr run`` at once on one home: both finish, the tables are whole.
- A write beyond ``RLIMIT_FSIZE``: one clear line, the previous tables stay.
"""

from __future__ import annotations

import json
import random
import re
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance

from tests.faults.conftest import FullRun, report_systems
from tests.faults.jrr import DATA_TABLES, RUN_SUFFIX, copy_dataset, fingerprints, jrr_process

REAPED = "was killed without finishing: marked failed, its pool slots freed"


class Watch:
    """Reads a home's Dagster records and files while a ``jrr run`` process works on it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._instance: DagsterInstance | None = None

    @property
    def instance(self) -> DagsterInstance | None:
        if self._instance is None and (self.home / "dagster" / "dagster.yaml").exists():
            self._instance = DagsterInstance.from_config(str(self.home / "dagster"))
        return self._instance

    def step_started(self, step: str) -> Callable[[], bool]:
        def started() -> bool:
            if self.instance is None:
                return False
            runs = [r for r in self.instance.get_runs(limit=3) if r.job_name == "jrr_pipeline_job"]
            return bool(runs) and any(
                e.dagster_event.step_key == step for e in
                self.instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_START))
        return started

    def checkpoint(self, stage: str) -> Callable[[], bool]:
        state = self.home / "artifacts" / "toyset" / ".state"
        return lambda: any(state.glob(f"{stage}-*/train/step-*"))

    def materialized(self, asset: str) -> bool:
        return self.instance.get_latest_materialization_event(AssetKey(asset)) is not None


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path,
              timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if ready():
            proc.kill()
            proc.wait()
            return
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no kill point within {timeout_s}s: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point:\n"
                f"{log.read_text()[-2000:]}")


def run_jrr(home: Path, log: Path, *args: str, env: dict[str, str] | None = None,
            **popen) -> subprocess.Popen:
    with open(log, "w") as out:
        return jrr_process(home, *args, env_extra=env, stdout=out, **popen)


# (what is interrupted, when to kill, the asset not materialized yet at the kill)
KILL_POINTS = [
    ("data step", lambda w: w.step_started("dataset_tables"), None),
    ("warm-up training", lambda w: w.checkpoint("warmup_retriever"), "warmup_retriever"),
    ("index build", lambda w: w.step_started("faiss_index"), "faiss_index"),
    ("report", lambda w: w.step_started("evaluation_report"), "evaluation_report"),
]


def test_sigkill_at_four_points_then_the_same_report(full_run: FullRun, tmp_path: Path):
    home, data = tmp_path / "home", copy_dataset(full_run.data, tmp_path / "toyset")
    watch = Watch(home)
    args = ("run", str(data), "--preset", "ci")
    for number, (point, ready, pending) in enumerate(KILL_POINTS):
        log = tmp_path / f"run{number}.log"
        kill_when(run_jrr(home, log, *args, env=full_run.env), ready(watch), log)
        if number:
            assert REAPED in log.read_text(), f"{point}: the previous kill was not reaped"
        if pending:
            assert not watch.materialized(pending), f"the kill came after {pending} was done"
    log = tmp_path / "final.log"
    final = run_jrr(home, log, *args, env=full_run.env)
    assert final.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert REAPED in log.read_text()
    assert report_systems(home) == full_run.systems


@pytest.fixture(scope="module")
def big_dataset(full_run: FullRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy dataset plus 200,000 filler documents of 100 random hex digits (a corpus table
    of over 10 MB even compressed)."""
    data = copy_dataset(full_run.data, tmp_path_factory.mktemp("big") / "toyset")
    rng = random.Random(0)
    filler = "".join(json.dumps({"_id": f"f{i}", "title": "", "text": rng.randbytes(50).hex()})
                     + "\n" for i in range(200_000))
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write(filler)
    return data


@pytest.fixture(scope="module")
def tables_home(full_run: FullRun, tmp_path_factory: pytest.TempPathFactory):
    """Two ``jrr run`` of the data and BM25 stages at once on a fresh home: both finish."""
    root = tmp_path_factory.mktemp("concurrent")
    home = root / "home"
    args = ("run", str(full_run.data), "--preset", "ci", "--select", "*bm25_negatives")
    procs = [run_jrr(home, root / f"run{i}.log", *args, env=full_run.env) for i in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    return home, root, codes


def test_two_concurrent_runs_both_finish(tables_home, full_run: FullRun):
    home, root, codes = tables_home
    logs = [(root / f"run{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert not any("Traceback" in log for log in logs)
    assert fingerprints(home) == fingerprints(full_run.home)
    assert fingerprints(home, ("negatives",)) == {"negatives": _bm25_negatives(full_run.home)}


def _bm25_negatives(home: Path) -> str:
    import duckdb

    from jrr_pipeline.assets.common import frame_version

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return frame_version(con.execute("SELECT * FROM negatives WHERE source = 'bm25'").pl())
    finally:
        con.close()


def test_sigkill_during_a_big_data_write_keeps_the_previous_tables(tables_home, big_dataset,
                                                                 full_run, tmp_path):
    home = tables_home[0]
    before = fingerprints(home)
    lock = home / "warehouse.duckdb.lock"
    watch = Watch(home)
    started = watch.step_started("dataset_tables")
    log = tmp_path / "big.log"
    proc = run_jrr(home, log, "run", str(big_dataset), "--preset", "ci", "--select", "corpus",
                   env=full_run.env)
    kill_when(proc, lambda: started() and f'"pid": {proc.pid}' in lock.read_text(), log)
    assert fingerprints(home) == before


def test_a_write_beyond_the_file_size_limit_fails_clearly(tables_home, big_dataset, full_run,
                                                          tmp_path):
    home = tables_home[0]
    before = fingerprints(home)
    limit = (home / "warehouse.duckdb").stat().st_size + (4 << 20)  # 4 MB more; the corpus needs more

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = tmp_path / "fsize.log"
    proc = run_jrr(home, log, "run", str(big_dataset), "--preset", "ci", "--select", "corpus",
                   "--quiet", env=full_run.env, preexec_fn=small_files)
    assert proc.wait(timeout=600) == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text
    warehouse = home / "warehouse.duckdb"
    problem = (f"jrr: error: {warehouse}: could not write the tables (File too large); the "
               f"previous tables are unchanged; free space or raise the file-size limit, then "
               f"run `jrr run` again")
    assert re.fullmatch(re.escape(problem) + RUN_SUFFIX, text.strip().splitlines()[-1]), text[-2000:]
    assert fingerprints(home) == before
    assert set(DATA_TABLES) <= set(before)
