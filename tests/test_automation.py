"""The retrain schedule, the dataset-change sensor and the follow-up sensor, ticked by hand."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.test_utils import create_run_for_test

from jrr_pipeline.automation import (
    AUTOMATION_TAG,
    CHANGED_TAG,
    DATASET_KEY,
    DATASET_SENSOR,
    FOLLOWUP_SENSOR,
    RETRAIN_SCHEDULE,
    TRIGGER_TAG,
    build_automation,
    parse_cursor,
)
from jrr_pipeline.dagster_compat import DATA_VERSION_TAG, observe
from jrr_pipeline.ops.staleness import stale_or_missing
from jrr_pipeline.pipeline import PIPELINE_JOB, build_definitions
from jrr_pipeline.resources import DatasetSource

TABLES = [AssetKey("corpus"), AssetKey("queries"), AssetKey("qrels")]


@pytest.fixture(autouse=True)
def _automation_env(monkeypatch: pytest.MonkeyPatch):
    for name in ("JRR_RETRAIN_CRON", "JRR_RETRAIN_SCHEDULE", "JRR_DATASET_SENSOR",
                 "JRR_DATASET_SENSOR_INTERVAL", "JRR_RETRAIN_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data(beir_dir: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the toy BEIR dataset."""
    return Path(shutil.copytree(beir_dir, tmp_path / "toyset"))


@pytest.fixture
def instance(jrr_env: Path):
    (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(jrr_env / "dagster")) as inst:
        yield inst


def automated_defs(data_dir: Path) -> Definitions:
    return build_definitions("ci", str(data_dir))  # the code location wires build_automation in


def tick(defs: Definitions, instance, name: str, cursor: str | None):
    context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                   resources={"dataset": defs.resources["dataset"]})
    return defs.resolve_sensor_def(name)(context)


def edit_first_query(data_dir: Path, suffix: str = " aggregate") -> None:
    lines = (data_dir / "queries.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["text"] += suffix
    lines[0] = json.dumps(row)
    (data_dir / "queries.jsonl").write_text("\n".join(lines) + "\n")


def materialize_tables(defs: Definitions, instance, tags: dict[str, str] | None = None) -> str:
    result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        instance=instance, asset_selection=TABLES, tags=tags or {},
    )
    assert result.success
    return result.run_id


def test_defaults_env_and_definitions(data: Path, monkeypatch: pytest.MonkeyPatch):
    defs = automated_defs(data)
    Definitions.validate_loadable(defs)  # the job name the instigators target exists
    schedule = defs.resolve_schedule_def(RETRAIN_SCHEDULE)
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.job_name == PIPELINE_JOB
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    dataset_sensor = defs.resolve_sensor_def(DATASET_SENSOR)
    assert dataset_sensor.default_status == DefaultSensorStatus.STOPPED
    assert dataset_sensor.minimum_interval_seconds == 60
    assert defs.resolve_sensor_def(FOLLOWUP_SENSOR).default_status == DefaultSensorStatus.RUNNING

    monkeypatch.setenv("JRR_RETRAIN_CRON", "*/15 * * * *")
    monkeypatch.setenv("JRR_RETRAIN_SCHEDULE", "on")
    monkeypatch.setenv("JRR_DATASET_SENSOR", "on")
    monkeypatch.setenv("JRR_DATASET_SENSOR_INTERVAL", "5")
    (schedule,), (dataset_sensor, _) = build_automation(PIPELINE_JOB, "ci")
    assert schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert dataset_sensor.default_status == DefaultSensorStatus.RUNNING
    assert dataset_sensor.minimum_interval_seconds == 5

    monkeypatch.setenv("JRR_RETRAIN_CRON", "every sunday")
    with pytest.raises(ValueError, match="JRR_RETRAIN_CRON"):
        build_automation(PIPELINE_JOB, "ci")
    monkeypatch.setenv("JRR_RETRAIN_CRON", "0 3 * * 0")
    monkeypatch.setenv("JRR_DATASET_SENSOR", "maybe")
    with pytest.raises(ValueError, match="JRR_DATASET_SENSOR"):
        build_automation(PIPELINE_JOB, "ci")


def test_dataset_sensor_reacts_to_content_not_mtime(data: Path, instance):
    from jrr_pipeline.assets.data import dataset_files

    defs = automated_defs(data)
    first = tick(defs, instance, DATASET_SENSOR, None)
    assert isinstance(first, SensorResult)
    (request,) = first.run_requests
    assert request.job_name == PIPELINE_JOB and request.stale_assets_only
    assert request.tags[TRIGGER_TAG] == DATASET_SENSOR and request.tags[AUTOMATION_TAG] == "true"
    files = {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"}
    assert set(request.tags[CHANGED_TAG].split(", ")) == files
    cursor_files, changes = parse_cursor(first.cursor)
    assert cursor_files == DatasetSource(data_dir=str(data)).content_hashes() and changes == 1

    # the observation carries the same data version as Dagster's own observation of dataset_files
    (event,) = first.asset_events
    assert event.asset_key == DATASET_KEY
    observe([dataset_files], instance=instance, resources={"dataset": DatasetSource(data_dir=str(data))})
    record = instance.fetch_observations(DATASET_KEY, limit=1).records[0]
    assert event.tags[DATA_VERSION_TAG] == record.asset_observation.tags[DATA_VERSION_TAG]

    assert isinstance(tick(defs, instance, DATASET_SENSOR, first.cursor), SkipReason)

    stamp = (data / "corpus.jsonl").stat().st_mtime + 3600
    os.utime(data / "corpus.jsonl", (stamp, stamp))
    assert isinstance(tick(defs, instance, DATASET_SENSOR, first.cursor), SkipReason)

    raw = bytearray((data / "queries.jsonl").read_bytes())
    at = raw.index(b'"text": "') + len(b'"text": "')
    raw[at] = ord("X") if raw[at] != ord("X") else ord("Y")  # one byte, same length
    (data / "queries.jsonl").write_bytes(bytes(raw))
    edited = tick(defs, instance, DATASET_SENSOR, first.cursor)
    assert isinstance(edited, SensorResult)
    (request2,) = edited.run_requests
    assert request2.tags[CHANGED_TAG] == "queries.jsonl"
    assert request2.tags["jrr/change_summary"] == "1 changed, 0 added, 0 removed"
    assert request2.run_key != request.run_key
    new_files, changes = parse_cursor(edited.cursor)
    assert changes == 2 and new_files["queries.jsonl"] != cursor_files["queries.jsonl"]
    assert edited.asset_events[0].tags[DATA_VERSION_TAG] != event.tags[DATA_VERSION_TAG]

    (data / "qrels" / "train.tsv").unlink()
    removed = tick(defs, instance, DATASET_SENSOR, edited.cursor)
    assert removed.run_requests[0].tags[CHANGED_TAG] == "qrels/train.tsv"
    assert removed.run_requests[0].tags["jrr/change_summary"] == "0 changed, 0 added, 1 removed"


def test_dataset_sensor_observation_makes_tables_stale(data: Path, instance):
    defs = automated_defs(data)
    first = tick(defs, instance, DATASET_SENSOR, None)
    for event in first.asset_events:
        instance.report_runless_asset_event(event)
    materialize_tables(defs, instance)
    assert set(stale_or_missing(defs, instance, TABLES).values()) == {"FRESH"}

    edit_first_query(data)
    second = tick(defs, instance, DATASET_SENSOR, first.cursor)
    assert second.run_requests[0].tags[CHANGED_TAG] == "queries.jsonl"
    assert set(stale_or_missing(defs, instance, TABLES).values()) == {"FRESH"}  # not yet recorded
    for event in second.asset_events:  # what the sensor daemon does with a SensorResult's events
        instance.report_runless_asset_event(event)
    assert set(stale_or_missing(defs, instance, TABLES).values()) == {"STALE"}


def test_dataset_sensor_waits_for_a_run_in_progress(data: Path, instance):
    defs = automated_defs(data)
    first = tick(defs, instance, DATASET_SENSOR, None)
    edit_first_query(data)
    # a "Materialize all" from the UI runs the implicit asset job: it blocks the sensor too
    busy = create_run_for_test(instance, job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED)
    waiting = tick(defs, instance, DATASET_SENSOR, first.cursor)
    assert isinstance(waiting, SkipReason) and busy.run_id in waiting.skip_message
    instance.report_run_canceled(busy)
    resumed = tick(defs, instance, DATASET_SENSOR, first.cursor)  # the change was not swallowed
    assert resumed.run_requests[0].tags[CHANGED_TAG] == "queries.jsonl"


def test_retrain_schedule_observes_then_requests_stale_only(data: Path, instance):
    defs = automated_defs(data)
    schedule = defs.resolve_schedule_def(RETRAIN_SCHEDULE)

    def run_tick():
        resources = {"dataset": defs.resources["dataset"]}
        return schedule(build_schedule_context(instance=instance, resources=resources))

    request = run_tick()
    assert isinstance(request, RunRequest)
    assert request.stale_assets_only and request.job_name == PIPELINE_JOB
    assert request.asset_selection is None  # the daemon narrows the whole job to stale assets
    assert request.tags[TRIGGER_TAG] == RETRAIN_SCHEDULE and request.tags["jrr/dataset"] == "toyset"
    assert len(instance.fetch_observations(DATASET_KEY, limit=10).records) == 1

    materialize_tables(defs, instance)
    status = stale_or_missing(defs, instance)
    assert {status[k] for k in TABLES} == {"FRESH"} and status[AssetKey("bm25_index")] == "MISSING"
    run_tick()
    assert len(instance.fetch_observations(DATASET_KEY, limit=10).records) == 1  # unchanged data

    edit_first_query(data)
    run_tick()
    assert len(instance.fetch_observations(DATASET_KEY, limit=10).records) == 2
    assert set(stale_or_missing(defs, instance, TABLES).values()) == {"STALE"}

    busy = create_run_for_test(instance, job_name=PIPELINE_JOB, status=DagsterRunStatus.STARTING)
    skipped = run_tick()
    assert isinstance(skipped, SkipReason) and busy.run_id in skipped.skip_message


def test_followup_sensor_continues_only_automated_runs(data: Path, instance):
    defs = automated_defs(data)
    assert isinstance(tick(defs, instance, FOLLOWUP_SENSOR, None), SkipReason)

    materialize_tables(defs, instance, tags={"jrr/source": "cli"})
    assert isinstance(tick(defs, instance, FOLLOWUP_SENSOR, None), SkipReason)  # not automated

    run_id = materialize_tables(defs, instance, tags={AUTOMATION_TAG: "true", TRIGGER_TAG: DATASET_SENSOR,
                                                      "jrr/dataset": "toyset"})
    result = tick(defs, instance, FOLLOWUP_SENSOR, None)
    (request,) = result.run_requests
    assert request.stale_assets_only and request.job_name == PIPELINE_JOB
    assert request.run_key == f"followup-{run_id}" and request.tags["jrr/after_run"] == run_id
    assert request.tags[TRIGGER_TAG] == FOLLOWUP_SENSOR and request.tags["jrr/dataset"] == "toyset"
    assert result.cursor == run_id
    assert isinstance(tick(defs, instance, FOLLOWUP_SENSOR, result.cursor), SkipReason)


def test_parse_cursor_tolerates_old_and_bad_cursors():
    assert parse_cursor(None) == (None, 0)
    assert parse_cursor("not json") == (None, 0)
    assert parse_cursor('{"a.tsv": "ff"}') == ({"a.tsv": "ff"}, 0)
    assert parse_cursor('{"files": {"a.tsv": "ff"}, "changes": 3}') == ({"a.tsv": "ff"}, 3)
