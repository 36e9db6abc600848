"""Which assets Dagster considers stale or missing, asked of a Definitions object and an instance."""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AssetKey, DagsterInstance, Definitions


def stale_or_missing(defs: Definitions, instance: DagsterInstance,
                     keys: Iterable[AssetKey] | None = None) -> dict[AssetKey, str]:
    """``{key: "STALE" | "MISSING" | "FRESH"}`` for ``keys`` (default: every materializable asset).

    Uses Dagster's own resolver (the one the UI and ``stale_assets_only`` schedules use): an asset is
    stale when its code version changed or an upstream data version moved since it was materialized.
    """
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    keys = list(keys) if keys is not None else sorted(graph.materializable_asset_keys)
    return {key: resolver.get_status(key).name for key in keys}
