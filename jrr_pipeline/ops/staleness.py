"""Which assets Dagster considers stale or missing, asked of a Definitions object and an instance."""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AssetKey, DagsterInstance, Definitions

from jrr_pipeline.dagster_compat import stale_status


def stale_or_missing(defs: Definitions, instance: DagsterInstance,
                     keys: Iterable[AssetKey] | None = None) -> dict[AssetKey, str]:
    """``{key: "STALE" | "MISSING" | "FRESH"}`` for ``keys`` (default: every materializable asset).

    Uses Dagster's own resolver (the one the UI and ``stale_assets_only`` schedules use): an asset is
    stale when its code version changed or an upstream data version moved since it was materialized.
    """
    graph = defs.resolve_asset_graph()
    keys = list(keys) if keys is not None else sorted(graph.materializable_asset_keys)
    return stale_status(graph, instance, keys)
