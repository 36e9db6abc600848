"""Materialize the stale part of the asset graph in-process, on the project's Dagster instance."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jrr_pipeline.ops.staleness import stale_or_missing
from jrr_pipeline.pipeline import PIPELINE_JOB, build_definitions

PID_TAG = "jrr/pid"
HOST_TAG = "jrr/host"


@dataclass
class RunOutcome:
    success: bool = True
    run_id: str | None = None
    materialized: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    failure: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    report_path: Path | None = None
    stale: list[str] = field(default_factory=list)  # dry run: stale or missing now
    downstream: list[str] = field(default_factory=list)  # dry run: below them, re-run if changed


def run_pipeline(
    data_dir: str,
    preset: str = "cpu",
    select: str = "*",
    stale_only: bool = True,
    dataset_name: str = "",
    run_config: dict | None = None,
    echo: Callable[[str], None] | None = print,
    instance=None,
    settings: dict | None = None,
    dry_run: bool = False,
) -> RunOutcome:
    """Observe the dataset files, then materialize the selected assets that are stale or missing."""
    from dagster import AssetKey, AssetSelection, DagsterInstance

    from jrr_pipeline.assets.data import dataset_files
    from jrr_pipeline.dagster_compat import observe
    from jrr_pipeline.pipeline import build_resources

    instance = instance or DagsterInstance.get()
    say = echo or (lambda _msg: None)
    defs = build_definitions(preset, data_dir, settings)
    resources = build_resources(data_dir, dataset_name)
    outcome = RunOutcome()

    config = dict(run_config or {})
    config.setdefault("loggers", {"console": {"config": {"log_level": "INFO" if echo else "ERROR"}}})
    for run_id in reap_dead_cli_runs(instance):
        say(f"run {run_id} was killed without finishing: marked failed, its pool slots freed")
    say(f"observing {data_dir} ...")
    observe([dataset_files], instance=instance, resources={"dataset": resources["dataset"]},
            run_config={"loggers": config["loggers"]})

    graph = defs.resolve_asset_graph()
    try:
        selected = AssetSelection.from_string(select).resolve(graph)
    except Exception as err:  # Dagster raises several error types for a bad selection string
        raise ValueError(f"--select {select!r}: not a Dagster asset selection ({err}); e.g. "
                         f"'joint_retriever*' (it and everything below it)") from None
    selected = {k for k in selected if k in graph.materializable_asset_keys}
    if not selected:
        raise ValueError(f"--select {select!r} matches no asset")
    dataset = resources["dataset"].dataset_name
    outcome.report_path = resources["artifacts"].report_dir(dataset) / "evaluation.json"
    job = defs.resolve_job_def(PIPELINE_JOB)
    done: set[AssetKey] = set()
    # A stale asset's new data version is only known once it has run, so its downstream assets turn
    # stale one round later (or not at all, when the content did not change): repeat to a fixpoint.
    runs_of: dict[AssetKey, int] = {}
    for _round in range(len(selected)):
        if stale_only:
            status = stale_or_missing(defs, instance, selected)
            # an asset that ran twice and is still stale would only loop (should not happen)
            todo = {k for k, s in status.items() if s != "FRESH" and runs_of.get(k, 0) < 2}
        else:
            todo = selected - done
        if not todo:
            break
        # corpus, queries and qrels are written in one transaction by one multi-asset
        todo = AssetSelection.assets(*todo).required_multi_asset_neighbors().resolve(graph)
        if dry_run:
            below = AssetSelection.assets(*todo).downstream().resolve(graph) & selected
            outcome.stale = sorted(k.to_user_string() for k in todo)
            outcome.downstream = sorted(k.to_user_string() for k in below - todo)
            outcome.fresh = sorted(k.to_user_string() for k in selected - below)
            return outcome
        todo = _ready(graph, todo, selected)
        names = sorted(k.to_user_string() for k in todo)
        say(f"materializing {len(names)} of {len(selected)} assets ({preset} preset): {', '.join(names)}")
        result = job.execute_in_process(
            instance=instance,
            asset_selection=sorted(todo, key=AssetKey.to_user_string),
            run_config=config,
            tags={"jrr/preset": preset, "jrr/dataset": dataset, "jrr/source": "cli",
                  PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()},
            raise_on_error=False,
        )
        outcome.run_id = result.run_id
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        done |= materialized
        for key in materialized:
            runs_of[key] = runs_of.get(key, 0) + 1
        for evaluation in result.get_asset_check_evaluations():
            key = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            outcome.checks[key] = evaluation.passed
        if not result.success:
            outcome.success = False
            outcome.failure = _failure_message(result)
            break
        if not stale_only:
            break
    outcome.materialized = sorted(k.to_user_string() for k in done)
    outcome.fresh = sorted(k.to_user_string() for k in selected - done)
    return outcome


def _ready(graph, todo: set, selected: set) -> set:
    """The stale assets to run now: those with no ancestor that is not stale yet but may change
    in this round (it lies below a stale asset). The others wait for the next round, so an asset
    never runs before an input that is about to move (e.g. the report before the joint index)."""
    from dagster import AssetSelection

    maybe = (AssetSelection.assets(*todo).downstream().resolve(graph) & selected) - todo
    ready = {k for k in todo
             if not (AssetSelection.assets(k).upstream().resolve(graph) - {k}) & maybe}
    if not ready:
        return todo
    return AssetSelection.assets(*ready).required_multi_asset_neighbors().resolve(graph) & todo


def reap_dead_cli_runs(instance) -> list[str]:
    """Fail the ``jrr run`` runs of this host whose process is gone (SIGKILL, OOM, power loss).

    Such a run stays STARTED in the instance and keeps its concurrency-pool slots, which would make
    every later run wait on pools ``jrr_device`` / ``jrr_warehouse`` forever.
    """
    from dagster import DagsterRunStatus, RunsFilter

    reaped = []
    live = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]
    for run in instance.get_runs(RunsFilter(statuses=live, tags={"jrr/source": "cli"})):
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        if not pid or host != socket.gethostname() or _alive(int(pid)):
            continue
        instance.report_run_failed(run, f"process {pid} ended without finishing the run")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _failure_message(result) -> str:
    """The user-code error behind the first failed step (e.g. 'corpus.jsonl:7: ...')."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            if error is not None:
                return f"{event.step_key}: {error.cls_name}: {error.message.strip()}"
            return event.message or "step failed"
    return "run failed"
