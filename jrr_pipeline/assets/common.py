"""Small helpers shared by the asset modules."""

from __future__ import annotations

import hashlib

import polars as pl
from dagster import AssetExecutionContext


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
    return tags
