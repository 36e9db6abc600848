"""Schedules and sensors that keep the asset graph fresh without anyone pressing a button.

- ``retrain_schedule`` (cron ``$JRR_RETRAIN_CRON``, off unless ``JRR_RETRAIN_SCHEDULE=on``): observes
  the dataset files, then asks for the job's stale or missing assets only.
- ``dataset_change_sensor`` (every ``$JRR_DATASET_SENSOR_INTERVAL`` s, off unless
  ``JRR_DATASET_SENSOR=on``): hashes the dataset files; when a file's *content* changed, was added or
  was removed it records a new ``dataset_files`` observation and asks for the stale assets.
- ``stale_followup_sensor`` (on): Dagster does not propagate staleness, so an asset downstream of a
  re-materialized one only turns stale once that run has finished. After each successful run that one
  of these instigators started, this sensor asks for the stale assets again, until none are left
  (the daemon drops a stale-only request that resolves to nothing).

Every instigator waits while a run (of any job) is in progress: two runs would contend for the DuckDB
file. Runs it starts carry ``jrr/automation=true`` and ``jrr/trigger=<instigator name>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DagsterInvalidDefinitionError,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from jrr_pipeline.dagster_compat import DATA_VERSION_TAG
from jrr_pipeline.resources import DatasetSource
from jrr_pipeline.resources.dataset import files_digest as dataset_version

RETRAIN_SCHEDULE = "retrain_schedule"
DATASET_SENSOR = "dataset_change_sensor"
FOLLOWUP_SENSOR = "stale_followup_sensor"
DATASET_KEY = AssetKey("dataset_files")
AUTOMATION_TAG = "jrr/automation"
TRIGGER_TAG = "jrr/trigger"
CHANGED_TAG = "jrr/changed_files"
DEFAULT_CRON = "0 3 * * 0"  # Sundays 03:00
DEFAULT_INTERVAL_S = 60
FOLLOWUP_INTERVAL_S = 30
MAX_TAG_CHARS = 1000
ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def build_automation(
    job_name: str, preset: str
) -> tuple[list[ScheduleDefinition], list[SensorDefinition]]:
    """The schedules and sensors for ``job_name``, configured from the environment (see module doc)."""
    schedules = [_retrain_schedule(job_name, preset)]
    sensors = [_dataset_sensor(job_name, preset), _followup_sensor(job_name, preset)]
    return schedules, sensors


def _retrain_schedule(job_name: str, preset: str) -> ScheduleDefinition:
    cron = os.environ.get("JRR_RETRAIN_CRON", DEFAULT_CRON).strip()
    if not _valid_cron(cron):
        raise ValueError(f"JRR_RETRAIN_CRON={cron!r} is not a valid cron expression (e.g. '0 3 * * 0')")
    running = _env_switch("JRR_RETRAIN_SCHEDULE")

    @schedule(
        name=RETRAIN_SCHEDULE,
        cron_schedule=cron,
        job_name=job_name,
        execution_timezone=os.environ.get("JRR_RETRAIN_TIMEZONE", "UTC"),
        default_status=DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED,
        description=f"Retrain on '{cron}': observe the dataset, then materialize stale or missing assets",
    )
    def retrain_schedule(context: ScheduleEvaluationContext, dataset: DatasetSource):
        busy = _active_run(context.instance)
        if busy:
            return SkipReason(f"run {busy} is still in progress")
        version = dataset_version(dataset.content_hashes())
        observed = _latest_observed_version(context.instance)
        if observed != version:
            # a schedule cannot return asset events: record the observation before the daemon
            # resolves which assets are stale
            context.instance.report_runless_asset_event(_observation(version, "retrain_schedule"))
        return RunRequest(
            job_name=job_name,
            stale_assets_only=True,
            tags=_tags(RETRAIN_SCHEDULE, preset, dataset.dataset_name),
        )

    return retrain_schedule


def _valid_cron(cron: str) -> bool:
    """Whether Dagster accepts ``cron`` as a schedule (asked of the public ScheduleDefinition)."""
    try:
        ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except DagsterInvalidDefinitionError:
        return False
    return True


def _dataset_sensor(job_name: str, preset: str) -> SensorDefinition:
    interval = _env_int("JRR_DATASET_SENSOR_INTERVAL", DEFAULT_INTERVAL_S)
    running = _env_switch("JRR_DATASET_SENSOR")

    @sensor(
        name=DATASET_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=interval,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Materialize stale assets when a dataset file's content changes (sha256, not mtime)",
    )
    def dataset_change_sensor(context: SensorEvaluationContext, dataset: DatasetSource):
        previous, changes = parse_cursor(context.cursor)
        current = dataset.content_hashes()
        if previous is not None and current == previous:
            return SkipReason(f"{len(current)} dataset files unchanged")
        busy = _active_run(context.instance)
        if busy:  # keep the old cursor: the change is seen again on the next tick
            return SkipReason(f"dataset changed, but run {busy} is still in progress")
        diff = diff_hashes(previous or {}, current)
        version = dataset_version(current)
        changes += 1
        tags = {
            **_tags(DATASET_SENSOR, preset, dataset.dataset_name),
            CHANGED_TAG: _join_limited(sorted(diff["changed"] + diff["added"] + diff["removed"])),
            "jrr/change_summary": ", ".join(f"{len(v)} {k}" for k, v in diff.items()),
        }
        return SensorResult(
            run_requests=[RunRequest(
                run_key=f"dataset-{changes}-{version}",
                job_name=job_name,
                stale_assets_only=True,
                tags=tags,
            )],
            asset_events=[_observation(version, DATASET_SENSOR, diff)],
            cursor=json.dumps({"files": current, "changes": changes}, sort_keys=True),
        )

    return dataset_change_sensor


def _followup_sensor(job_name: str, preset: str) -> SensorDefinition:
    @sensor(
        name=FOLLOWUP_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=FOLLOWUP_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "After an automated run succeeds, materialize the assets that turned stale because of it "
            "(inert until the schedule or the dataset sensor has started a run)"
        ),
    )
    def stale_followup_sensor(context: SensorEvaluationContext):
        busy = _active_run(context.instance)
        if busy:
            return SkipReason(f"run {busy} is still in progress")
        finished = context.instance.get_runs(
            filters=RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.SUCCESS],
                               tags={AUTOMATION_TAG: "true"}),
            limit=1,
        )
        if not finished or finished[0].run_id == context.cursor:
            return SkipReason("no new successful automated run")
        last = finished[0]
        dataset = last.tags.get("jrr/dataset", "")
        return SensorResult(
            run_requests=[RunRequest(
                run_key=f"followup-{last.run_id}",
                job_name=job_name,
                stale_assets_only=True,
                tags={**_tags(FOLLOWUP_SENSOR, preset, dataset), "jrr/after_run": last.run_id},
            )],
            cursor=last.run_id,
        )

    return stale_followup_sensor


def parse_cursor(cursor: str | None) -> tuple[dict[str, str] | None, int]:
    """``(path -> sha256, number of changes seen)`` from the dataset sensor's cursor (None: first tick).

    A plain ``{path: sha256}`` object is accepted too; an unreadable cursor counts as no cursor.
    """
    if not cursor:
        return None, 0
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError:
        return None, 0
    if isinstance(data, dict) and isinstance(data.get("files"), dict):
        return {str(k): str(v) for k, v in data["files"].items()}, int(data.get("changes", 0))
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v for k, v in data.items()}, 0
    return None, 0


def diff_hashes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, list[str]]:
    """``{"changed": [...], "added": [...], "removed": [...]}``: relative paths, sorted."""
    return {
        "changed": sorted(p for p in new.keys() & old.keys() if new[p] != old[p]),
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
    }


def _observation(version: str, source: str, diff: dict[str, list[str]] | None = None) -> AssetObservation:
    metadata: dict[str, str | int] = {"observed_by": source}
    if diff is not None:
        metadata.update({k: _join_limited(v) for k, v in diff.items() if v})
    return AssetObservation(asset_key=DATASET_KEY, tags={DATA_VERSION_TAG: version}, metadata=metadata)


def _latest_observed_version(instance: DagsterInstance) -> str | None:
    records = instance.fetch_observations(DATASET_KEY, limit=1).records
    if not records:
        return None
    observation = records[0].asset_observation
    return observation.tags.get(DATA_VERSION_TAG) if observation and observation.tags else None


def _active_run(instance: DagsterInstance) -> str | None:
    """The id of a queued or running run, if any.

    Any job counts, not only ours: "Materialize all" in the UI launches Dagster's implicit asset job,
    which writes the same DuckDB file.
    """
    runs = instance.get_runs(filters=RunsFilter(statuses=ACTIVE), limit=1)
    return runs[0].run_id if runs else None


def _tags(trigger: str, preset: str, dataset: str) -> dict[str, str]:
    tags = {AUTOMATION_TAG: "true", TRIGGER_TAG: trigger, "jrr/preset": preset}
    if dataset:
        tags["jrr/dataset"] = dataset
    return tags


def _join_limited(names: list[str]) -> str:
    """Comma-joined names, cut to MAX_TAG_CHARS with a '(+N more)' suffix."""
    text = ""
    for i, name in enumerate(names):
        candidate = f"{text}, {name}" if text else name
        if len(candidate) > MAX_TAG_CHARS:
            return f"{text} (+{len(names) - i} more)"
        text = candidate
    return text


def _env_switch(name: str) -> bool:
    value = os.environ.get(name, "off").strip().lower()
    if value in {"on", "1", "true", "yes"}:
        return True
    if value in {"off", "0", "false", "no", ""}:
        return False
    raise ValueError(f"{name}={value!r}: expected 'on' or 'off'")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a whole number of seconds") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r}: must be at least 1")
    return value
