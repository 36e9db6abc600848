"""What each asset keeps, and whether it is still there as its latest materialization recorded.

Dagster judges staleness from its records alone: after ``rm warehouse.duckdb`` every asset is
still "fresh". ``jrr run`` therefore verifies the storage of every materialized asset first:
its table (present, the recorded ``dagster/row_count`` rows and, for the data tables whose data
version is their content hash, that hash), its artifact directory (present and, where the
asset recorded one, the same ``jrr/manifest`` listing checksum) or its report file. An asset
whose storage is gone or differs is rebuilt, with the reason printed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance

from jrr_pipeline.assets.common import MANIFEST_KEY, frame_version
from jrr_pipeline.assets.negatives import WARMUP_INDEX
from jrr_pipeline.dagster_compat import extract_data_version_from_entry
from jrr_pipeline.ml.io import directory_manifest
from jrr_pipeline.resources import ArtifactStore, Warehouse

HASH_MAX_ROWS = 1_000_000  # data tables up to this size are hashed; larger ones counted only


@dataclass(frozen=True)
class Storage:
    """Where an asset's result lives: rows of a table (``where`` selects them in a shared
    table; ``hashed``: the data version is their content hash), an artifact folder, the report."""

    table: str = ""
    where: str = "true"
    hashed: bool = False
    artifact: str = ""
    report: bool = False


STORAGE: dict[str, Storage] = {
    "corpus": Storage(table="corpus", hashed=True),
    "queries": Storage(table="queries", hashed=True),
    "qrels": Storage(table="qrels", hashed=True),
    "bm25_index": Storage(artifact="bm25_index"),
    "bm25_negatives": Storage(table="negatives", where="source = 'bm25'"),
    "warmup_retriever": Storage(artifact="warmup_retriever"),
    "warmup_reranker": Storage(artifact="warmup_reranker"),
    "dense_negatives": Storage(table="negatives", where="source = 'dense'",
                               artifact=WARMUP_INDEX),
    "denoised_candidates": Storage(table="candidates"),
    "joint_retriever": Storage(artifact="joint_retriever"),
    "joint_reranker": Storage(artifact="joint_reranker"),
    "faiss_index": Storage(artifact="faiss_index"),
    "evaluation_report": Storage(report=True),
}


def lost_storage(instance: DagsterInstance, keys: Iterable[AssetKey], warehouse: Warehouse,
                 artifacts: ArtifactStore, dataset: str) -> dict[AssetKey, str]:
    """``{asset: why}`` for the materialized assets of ``keys`` whose storage is missing or
    differs from what their latest materialization recorded."""
    lost = {}
    tables = _tables(warehouse)
    for key in sorted(keys, key=AssetKey.to_user_string):
        storage = STORAGE.get(key.to_user_string())
        event = instance.get_latest_materialization_event(key)
        if storage is None or event is None:
            continue
        metadata = {k: getattr(v, "value", v) for k, v in
                    event.asset_materialization.metadata.items()}
        why = None
        if storage.table:
            version = extract_data_version_from_entry(event)
            why = _table_problem(warehouse, tables, storage, metadata,
                                 version.value if version and storage.hashed else None)
        if why is None and storage.artifact:
            why = _artifact_problem(artifacts, dataset, storage.artifact, metadata)
        if why is None and storage.report:
            report = artifacts.report_dir(dataset) / "evaluation.json"
            why = None if report.is_file() else f"report {report} is missing"
        if why:
            lost[key] = why
    return lost


def _tables(warehouse: Warehouse) -> set[str] | None:
    """The warehouse's table names (None: no warehouse file)."""
    if not warehouse.file.exists():
        return None
    return set(warehouse.query("SELECT table_name FROM information_schema.tables")["table_name"])


def _table_problem(warehouse: Warehouse, tables: set[str] | None, storage: Storage,
                   metadata: dict, version: str | None) -> str | None:
    if tables is None:
        return f"the warehouse {warehouse.file} is missing"
    if storage.table not in tables:
        return f"table {storage.table} is missing from {warehouse.file}"
    sql = f"SELECT count(*) AS n FROM {storage.table} WHERE {storage.where}"
    rows = int(warehouse.query(sql)["n"][0])
    recorded = metadata.get("dagster/row_count")
    if recorded is not None and rows != int(recorded):
        return f"table {storage.table} has {rows} rows, the materialization wrote {recorded}"
    if version and rows <= HASH_MAX_ROWS:
        content = frame_version(warehouse.query(f"SELECT * FROM {storage.table}"))
        if content != version:
            return (f"table {storage.table} was changed after its materialization (content hash "
                    f"{content}, recorded {version})")
    return None


def _artifact_problem(artifacts: ArtifactStore, dataset: str, name: str,
                      metadata: dict) -> str | None:
    path = artifacts.path(dataset, name)
    if not path.is_dir() or not any(path.iterdir()):
        return f"artifact directory {path} is missing or empty"
    recorded = metadata.get(MANIFEST_KEY)
    if recorded and directory_manifest(path) != recorded:
        return f"artifact directory {path} differs from its materialization (files changed)"
    return None
