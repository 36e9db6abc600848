"""The Dagster private APIs the project uses (all in ``jrr_pipeline/dagster_compat.py``) still do
what the project relies on: a Dagster upgrade that moves or changes one fails here, by name."""

from __future__ import annotations

import contextvars
import gc
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetObservation,
    BetaWarning,
    DagsterInstance,
    DagsterInvariantViolationError,
    DataVersion,
    Definitions,
    PreviewWarning,
    asset,
    instance_for_test,
    materialize,
    observable_source_asset,
)

import jrr_pipeline
from jrr_pipeline import dagster_compat as compat

FILES, TABLE, REPORT = AssetKey("files"), AssetKey("table"), AssetKey("report")


def toy_assets(version: str) -> list:
    """files (observable source, data version ``version``) -> table -> report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)

        @observable_source_asset(name="files")
        def files():
            return DataVersion(version)

    @asset(deps=[files], code_version="1")
    def table() -> None:
        return None

    @asset(deps=[table], code_version="1")
    def report() -> None:
        return None

    return [files, table, report]


@pytest.fixture
def instance(tmp_path: Path):
    # these tests load Definitions directly, not through build_definitions: drop a storage that an
    # earlier test's collected instance may have left in the context (a GC-timing flake otherwise)
    compat.forget_closed_defs_state_storage()
    with instance_for_test(temp_dir=str(tmp_path)) as inst:
        yield inst


def test_observe_records_the_data_version_of_an_observable_source(instance):
    files = toy_assets("v1")[0]
    result = compat.observe([files], instance=instance)
    assert result.success
    record = instance.fetch_observations(FILES, limit=1).records[0]
    assert compat.extract_data_version_from_entry(record.event_log_entry) == DataVersion("v1")
    assert record.asset_observation.tags[compat.DATA_VERSION_TAG] == "v1"


def test_stale_status_follows_materializations_and_tagged_observations(instance):
    assets = toy_assets("v1")
    graph = Definitions(assets=assets).resolve_asset_graph()
    assert compat.stale_status(graph, instance, [TABLE, REPORT]) == {TABLE: "MISSING", REPORT: "MISSING"}

    compat.observe(assets[:1], instance=instance)
    assert materialize(assets, instance=instance, selection=[TABLE, REPORT]).success
    assert compat.stale_status(graph, instance, [TABLE, REPORT]) == {TABLE: "FRESH", REPORT: "FRESH"}
    # each materialization records the data versions it read (what `jrr lineage` walks)
    tags = instance.get_latest_materialization_event(TABLE).asset_materialization.tags
    assert tags[f"{compat.INPUT_DATA_VERSION_TAG_PREFIX}/files"] == "v1"
    table_version = compat.extract_data_version_from_entry(
        instance.get_latest_materialization_event(TABLE)).value
    report_tags = instance.get_latest_materialization_event(REPORT).asset_materialization.tags
    assert report_tags[f"{compat.INPUT_DATA_VERSION_TAG_PREFIX}/table"] == table_version

    # an observation tagged with a new data version (what the dataset sensor and the retrain
    # schedule record) makes the asset that read the old one stale
    instance.report_runless_asset_event(
        AssetObservation(asset_key=FILES, tags={compat.DATA_VERSION_TAG: "v2"}))
    status = compat.stale_status(graph, instance, [TABLE, REPORT])
    assert status[TABLE] == "STALE"


def test_forget_closed_defs_state_storage_drops_a_dead_instances_storage():
    """An instance entered in one context and collected in another leaves its defs-state storage in
    the first one's context variable; loading Definitions there fails until it is forgotten."""
    held: list[DagsterInstance] = []
    defs_of = lambda: Definitions(assets=toy_assets("v1")[1:2])  # noqa: E731

    def enter() -> None:
        instance = DagsterInstance.local_temp(tempfile.mkdtemp())
        assert instance.defs_state_storage is not None, "this Dagster has no defs-state storage"
        held.append(instance.__enter__())
        instance.dispose()

    def collect() -> None:
        held.clear()
        gc.collect()

    context = contextvars.copy_context()
    context.run(enter)
    contextvars.copy_context().run(collect)
    with pytest.raises(DagsterInvariantViolationError, match="weakref"):
        context.run(lambda: defs_of().resolve_asset_graph())
    context.run(compat.forget_closed_defs_state_storage)
    assert context.run(lambda: defs_of().resolve_asset_graph()).materializable_asset_keys == {TABLE}
    compat.forget_closed_defs_state_storage()  # nothing to forget: a no-op


def test_quiet_dagster_previews_ignores_only_beta_and_preview_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.quiet_dagster_previews()
        warnings.warn("beta", BetaWarning, stacklevel=1)
        warnings.warn("preview", PreviewWarning, stacklevel=1)
        warnings.warn("other", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["other"]


def test_only_dagster_compat_uses_dagster_private_apis():
    root = Path(jrr_pipeline.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if re.search(r"\bdagster\._", p.read_text(encoding="utf-8")))
    assert users == ["dagster_compat.py"], (
        f"{users}: Dagster private APIs (dagster._...) belong in jrr_pipeline/dagster_compat.py")


def _no_dagster_stability_warnings(command: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "default"})
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("BetaWarning", "PreviewWarning"):
        assert name not in out.stderr, out.stderr[-3000:]
    return out


def test_cli_prints_no_beta_or_preview_warnings(beir_dir: Path, jrr_env: Path):
    script = Path(sys.executable).with_name("jrr")  # the installed entry point
    jrr = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from jrr_pipeline.cli import main; sys.exit(main())"]
    out = _no_dagster_stability_warnings([*jrr, "run", str(beir_dir), "--preset", "ci", "--dry-run"])
    assert "stale or missing: " in out.stdout


def test_code_location_loads_without_beta_or_preview_warnings(beir_dir: Path, jrr_env: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JRR_DATA_DIR", str(beir_dir))
    monkeypatch.setenv("JRR_PRESET", "ci")
    _no_dagster_stability_warnings(
        [sys.executable, "-c", "from jrr_pipeline.definitions import defs; defs.resolve_asset_graph()"])
