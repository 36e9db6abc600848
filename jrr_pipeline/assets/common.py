"""Small helpers shared by the asset modules."""

from __future__ import annotations

import hashlib

import polars as pl
from dagster import AssetExecutionContext, AssetKey

# Dagster concurrency pools (limit 1 each in the instance's dagster.yaml written by paths.py).
DEVICE_POOL = "jrr_device"  # steps that train, encode or rerank
WAREHOUSE_POOL = "jrr_warehouse"  # steps that only write DuckDB tables / BM25 files


def frame_version(frame: pl.DataFrame) -> str:
    """A content hash of a table (row order matters), used as its Dagster data version.

    Hashes the CSV serialisation slice by slice: stable across library versions, bounded memory.
    """
    digest = hashlib.sha256(",".join(frame.columns).encode())
    for chunk in frame.iter_slices(200_000):
        digest.update(chunk.write_csv(include_header=False).encode())
    return digest.hexdigest()[:16]


def dagster_tags(context: AssetExecutionContext) -> dict[str, str]:
    """Tags that tie an MLflow run to the Dagster run and the asset(s) that made it."""
    tags = {"dagster.run_id": context.run.run_id}
    keys = sorted(context.selected_asset_keys, key=lambda k: k.to_user_string())
    tags["dagster.asset_key"] = ",".join(k.to_user_string() for k in keys)
    for key in keys:
        version = context.assets_def.code_versions_by_key.get(key)
        if version:
            tags[f"dagster.code_version.{key.to_user_string()}"] = version
    for key, version in input_data_versions(context).items():
        tags[f"dagster.input_data_version.{key}"] = version
    return tags


def input_data_versions(context: AssetExecutionContext) -> dict[str, str]:
    """The current data version of every upstream asset of this step (what the step reads)."""
    from jrr_pipeline.dagster_compat import extract_data_version_from_entry

    upstream: set[AssetKey] = set()
    for key in context.selected_asset_keys:
        upstream |= set(context.assets_def.asset_deps.get(key, ()))
    upstream -= set(context.selected_asset_keys)
    versions = {}
    for key in sorted(upstream, key=AssetKey.to_user_string):
        record = context.instance.get_latest_data_version_record(key)
        version = extract_data_version_from_entry(record.event_log_entry) if record else None
        if version is not None:
            versions[key.to_user_string()] = version.value
    return versions
