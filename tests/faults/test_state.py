"""State verified against the records: storage deleted, changed or corrupted behind the
pipeline's back is found by the next ``jrr run``, which rebuilds exactly what was lost (and
says why) or, for a corrupted DuckDB file, stops with one line saying how to recover.

Every case works on the session's fully materialized home, in order; each leaves it whole.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from tests.faults.conftest import FullRun, report_systems
from tests.faults.jrr import fingerprints, jrr

WAREHOUSE_ASSETS = ["bm25_negatives", "corpus", "denoised_candidates", "dense_negatives",
                    "qrels", "queries"]


def sql(statement: str) -> Callable[[Path], None]:
    def damage(home: Path) -> None:
        con = duckdb.connect(str(home / "warehouse.duckdb"))
        con.execute(statement)
        con.close()
    return damage


def remove(*paths: str) -> Callable[[Path], None]:
    def damage(home: Path) -> None:
        for rel in paths:
            path = home / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def truncate(rel: str) -> Callable[[Path], None]:
    def damage(home: Path) -> None:
        os.truncate(home / rel, (home / rel).stat().st_size // 2)
    return damage


def both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(home: Path) -> None:
        for one in damages:
            one(home)
    return damage


@dataclass(frozen=True)
class Lost:
    name: str
    damage: Callable[[Path], None]
    rebuilt: list[str]  # exactly what the next `jrr run` materializes
    why: list[str]  # a fragment of the printed reason, per lost asset ({h}: the home)


ART = "artifacts/toyset"
LOST = [
    Lost("warehouse_deleted", remove("warehouse.duckdb"), WAREHOUSE_ASSETS,
         [f"{a}: the warehouse {{h}}/warehouse.duckdb is missing: rebuilding it"
          for a in WAREHOUSE_ASSETS]),
    Lost("table_edited", sql("UPDATE corpus SET text = text || ' edited' WHERE doc_id = 'd0_1'"),
         ["corpus", "qrels", "queries"],
         ["corpus: table corpus was changed after its materialization (content hash "]),
    Lost("rows_deleted", sql("DELETE FROM candidates WHERE query_id = 'q0_0'"),
         ["denoised_candidates"],
         ["denoised_candidates: table candidates has 140 rows, the materialization wrote 144: "
          "rebuilding it"]),
    Lost("negatives_table_dropped", sql("DROP TABLE negatives"),
         ["bm25_negatives", "dense_negatives"],
         ["bm25_negatives: table negatives is missing from {h}/warehouse.duckdb: rebuilding it"]),
    Lost("artifacts_deleted_or_truncated",
         both(remove(f"{ART}/warmup_reranker", "reports/toyset/evaluation.json"),
              truncate(f"{ART}/faiss_index/index.faiss")),
         ["evaluation_report", "faiss_index", "warmup_reranker"],
         ["warmup_reranker: artifact directory {h}/artifacts/toyset/warmup_reranker is missing or "
          "empty: rebuilding it",
          "faiss_index: artifact directory {h}/artifacts/toyset/faiss_index differs from its "
          "materialization (files changed): rebuilding it",
          "evaluation_report: report {h}/reports/toyset/evaluation.json is missing: rebuilding "
          "it"]),
    Lost("joint_checkpoint_deleted", remove(f"{ART}/joint_retriever"),
         ["joint_reranker", "joint_retriever"],
         ["joint_retriever: artifact directory {h}/artifacts/toyset/joint_retriever is missing "
          "or empty: rebuilding it"]),
]


@pytest.fixture
def on_full_home(full_run: FullRun, monkeypatch: pytest.MonkeyPatch) -> FullRun:
    monkeypatch.setenv("JRR_HOME", str(full_run.home))
    monkeypatch.setenv("DAGSTER_HOME", str(full_run.home / "dagster"))
    monkeypatch.setenv("JRR_SETTINGS", str(full_run.settings))
    return full_run


@pytest.mark.parametrize("case", LOST, ids=lambda c: c.name)
def test_lost_storage_is_rebuilt_exactly(on_full_home: FullRun, case: Lost):
    home = on_full_home.home
    tables = fingerprints(home)
    case.damage(home)
    started = time.perf_counter()
    result = jrr("run", str(on_full_home.data), "--preset", "ci")
    seconds = time.perf_counter() - started
    assert result.code == 0, (result.out + result.err)[-3000:]
    summary = next(line for line in result.out.splitlines() if line.startswith("materialized "))
    assert summary.split(": ", 1)[1] == ", ".join(case.rebuilt), summary
    for why in case.why:
        assert any(line.startswith(why.format(h=home)) for line in result.out.splitlines()), \
            result.out
    assert fingerprints(home) == tables
    assert report_systems(home) == on_full_home.systems
    print(f"{case.name}: rebuilt {', '.join(case.rebuilt)} in {seconds:.1f}s")
    if case is LOST[0]:  # rebuilt means fresh again: the next run has nothing to do
        again = jrr("run", str(on_full_home.data), "--preset", "ci", "--quiet")
        assert again.out.startswith("nothing stale: 13 assets up to date"), again.out


@pytest.mark.parametrize(("name", "offset", "what"), [
    ("header", 0, "not a DuckDB database file"),
    ("blocks", 8192, "corrupted DuckDB file (a block checksum does not match)"),
])
def test_a_corrupted_warehouse_is_named_with_how_to_recover(on_full_home: FullRun, tmp_path,
                                                           name: str, offset: int, what: str):
    home = on_full_home.home
    warehouse = home / "warehouse.duckdb"
    good = shutil.copy(warehouse, tmp_path / "good.duckdb")
    with open(warehouse, "r+b") as fh:
        size = warehouse.stat().st_size
        for at in range(offset, size if offset else 1, 4096):
            fh.seek(at)
            fh.write(b"\xff" * 512)
    try:
        result = jrr("run", str(on_full_home.data), "--preset", "ci", "--quiet")
        result.assert_clean_error(1, f"{warehouse}: {what}; move it aside (mv {warehouse} "
                                     f"{warehouse}.broken) and run `jrr run` again: it rebuilds "
                                     f"the tables from the dataset", during_run=False)
    finally:
        shutil.copy(good, warehouse)


def test_every_asset_declares_its_storage():
    """A new asset must say what it keeps, or lost storage would go unnoticed."""
    from jrr_pipeline.ops.storage import STORAGE
    from jrr_pipeline.pipeline import build_definitions

    graph = build_definitions("ci", "").resolve_asset_graph()
    assert set(STORAGE) == {k.to_user_string() for k in graph.materializable_asset_keys}
