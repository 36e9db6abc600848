"""Every use of a Dagster private API (``dagster._...``) in jrr_pipeline, each with why.

Dagster moves its private modules between releases without notice. Keeping every such use here
means an upgrade breaks this one module, and ``tests/test_dagster_compat.py`` names the shim that
broke. Checked against dagster 1.13: where a public API does the job the project uses it instead
(``ScheduleDefinition`` validates the retrain cron, ``dagster.DagsterInvariantViolationError``,
``datetime.now(UTC)`` for Dagster's clock). What remains has no public equivalent:

- ``DATA_VERSION_TAG``, ``INPUT_DATA_VERSION_TAG_PREFIX``, ``extract_data_version_from_entry``:
  data versions live in event tags; the public API offers no way to read them from an event log
  entry or to set one on an ``AssetObservation``.
- ``observe``: runs an observable source asset in process (what the UI's "Observe" button does).
- ``stale_status``: Dagster's own stale/missing resolver, which the UI and ``stale_assets_only``
  run requests use; it is not exposed publicly.
- ``forget_closed_defs_state_storage``: a context variable that can outlive the instance it
  belongs to.

Also here, as it changes with the Dagster release too: ``quiet_dagster_previews`` (public classes).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime

from dagster import (
    AssetKey,
    BetaWarning,
    DagsterInstance,
    DagsterInvariantViolationError,
    PreviewWarning,
)

# Public API missing: ObserveResult(data_version=...) exists only inside an observable source asset;
# the dataset sensor and the retrain schedule record the dataset's data version by tagging an
# AssetObservation, and read it back from the latest observation, with this tag.
# extract_data_version_from_entry reads a materialization's or observation's data version (the
# lineage walk, the input versions logged to MLflow); INPUT_DATA_VERSION_TAG_PREFIX names the tags
# that hold the data versions a materialization read (dagster.DataProvenance is public but cannot
# be built from an entry's tags publicly).
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    INPUT_DATA_VERSION_TAG_PREFIX,
    extract_data_version_from_entry,
)

# Public API missing: dagster 1.13 keeps ``observe`` (the in-process run of observable source assets)
# out of the public namespace. The runner observes ``dataset_files`` before it asks what is stale.
from dagster._core.definitions.observe import observe

__all__ = [
    "DATA_VERSION_TAG",
    "INPUT_DATA_VERSION_TAG_PREFIX",
    "extract_data_version_from_entry",
    "forget_closed_defs_state_storage",
    "observe",
    "quiet_dagster_previews",
    "stale_status",
]


def stale_status(asset_graph, instance: DagsterInstance,
                 keys: Iterable[AssetKey]) -> dict[AssetKey, str]:
    """``{key: "STALE" | "MISSING" | "FRESH"}`` from Dagster's own resolver.

    Public API missing: staleness is shown in the UI and applied by ``RunRequest(stale_assets_only=
    True)``, but there is no public call that reports it; ``jrr run`` (stale-only rounds, dry runs)
    needs it in process.
    """
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver

    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=datetime.now(UTC), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph,
                                          loading_context=view)
    return {key: resolver.get_status(key).name for key in keys}


def forget_closed_defs_state_storage() -> None:
    """Drop Dagster's current defs-state storage when the instance it belongs to is gone.

    Entering a ``DagsterInstance`` puts its defs-state storage in a context variable that loading
    ``Definitions`` reads. An instance entered and never exited (a test's, a sensor context's) can
    leave it there after the instance is garbage collected; loading Definitions then fails with
    "Attempted to resolve undefined DagsterInstance weakref". ``build_definitions`` calls this
    first, which covers ``jrr run`` too: it builds its Definitions before anything loads them.

    Public API missing: the variable can only be read or set through private names.
    """
    try:
        from dagster._core.storage.defs_state.base import _current_storage
    except ImportError:  # a Dagster without defs-state storage: nothing can leak
        return
    storage = _current_storage.get()
    if storage is None or not getattr(storage, "has_instance", False):
        return
    # an instance that only a reference cycle keeps "alive" would die at the next collection,
    # after this check: collect first, so what survives stays alive while it is referenced
    gc.collect()
    try:
        storage._instance  # noqa: B018 - resolving the weakref is the check
    except DagsterInvariantViolationError:
        _current_storage.set(None)


def quiet_dagster_previews() -> None:
    """Ignore Dagster's ``BetaWarning`` and ``PreviewWarning`` (only those) in this process.

    The code location relies on APIs Dagster marks beta (``observable_source_asset``, asset
    selection strings over source assets) and warns about on every load; the project pins Dagster,
    so for a user of ``jrr`` these warnings are noise. Called where the code location and the CLI
    start; pytest resets warning filters per test, so tests still see them.
    """
    for category in (BetaWarning, PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
