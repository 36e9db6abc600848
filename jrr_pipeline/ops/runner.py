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
    """Observe the dataset files, then materialize the selected assets that are stale or missing
    (every selected one when ``stale_only`` is False); ``dry_run`` only reports what is stale."""
    from dagster import DagsterInstance

    session = _Session(data_dir, preset, dataset_name, settings, run_config, echo,
                       instance or DagsterInstance.get())
    session.observe()
    selected = session.select(select)
    if dry_run:
        return session.dry_run(selected)
    return session.materialize(selected, stale_only)


class _Session:
    """One ``jrr run``: the Definitions, resources and instance it works with."""

    def __init__(self, data_dir: str, preset: str, dataset_name: str, settings: dict | None,
                 run_config: dict | None, echo: Callable[[str], None] | None, instance) -> None:
        from jrr_pipeline.pipeline import build_resources

        self.data_dir, self.preset, self.instance = data_dir, preset, instance
        self.settings = settings
        self.say = echo or (lambda _msg: None)
        self.defs = build_definitions(preset, data_dir, settings)
        self.graph = self.defs.resolve_asset_graph()
        self.resources = build_resources(data_dir, dataset_name)
        self.dataset = self.resources["dataset"].dataset_name
        self.config = dict(run_config or {})
        self.config.setdefault("loggers", {"console": {"config": {
            "log_level": "INFO" if echo else "ERROR"}}})

    def observe(self) -> None:
        """Fail the runs a killed ``jrr run`` left behind, then hash the dataset files."""
        from jrr_pipeline.assets.data import dataset_files
        from jrr_pipeline.dagster_compat import observe

        for run_id in reap_dead_cli_runs(self.instance):
            self.say(f"run {run_id} was killed without finishing: marked failed, its pool slots "
                     f"freed")
        self.say(f"observing {self.data_dir} ...")
        observe([dataset_files], instance=self.instance,
                resources={"dataset": self.resources["dataset"]},
                run_config={"loggers": self.config["loggers"]})

    def select(self, select: str) -> set:
        from dagster import AssetSelection

        try:
            selected = AssetSelection.from_string(select).resolve(self.graph)
        except Exception as err:  # Dagster raises several error types for a bad selection string
            raise ValueError(f"--select {select!r}: not a Dagster asset selection ({err}); e.g. "
                             f"'joint_retriever*' (it and everything below it)") from None
        selected = {k for k in selected if k in self.graph.materializable_asset_keys}
        if not selected:
            raise ValueError(f"--select {select!r} matches no asset")
        return selected

    def outcome(self) -> RunOutcome:
        report = self.resources["artifacts"].report_dir(self.dataset) / "evaluation.json"
        return RunOutcome(report_path=report)

    def stale(self, selected: set, runs_of: dict) -> set:
        """Stale or missing assets of ``selected`` (with their multi-asset neighbours); an asset
        that ran twice and is still stale is left out (it would only loop)."""
        from dagster import AssetSelection

        status = stale_or_missing(self.defs, self.instance, selected)
        todo = {k for k, s in status.items() if s != "FRESH" and runs_of.get(k, 0) < 2}
        # corpus, queries and qrels are written in one transaction by one multi-asset
        return AssetSelection.assets(*todo).required_multi_asset_neighbors().resolve(self.graph) \
            if todo else set()

    def dry_run(self, selected: set) -> RunOutcome:
        from dagster import AssetSelection

        outcome = self.outcome()
        todo = self.stale(selected, {})
        below = AssetSelection.assets(*todo).downstream().resolve(self.graph) & selected \
            if todo else set()
        outcome.stale = sorted(k.to_user_string() for k in todo)
        outcome.downstream = sorted(k.to_user_string() for k in below - todo)
        outcome.fresh = sorted(k.to_user_string() for k in selected - below)
        return outcome

    def materialize(self, selected: set, stale_only: bool) -> RunOutcome:
        """Run rounds until nothing selected is stale. A stale asset's new data version is only
        known once it has run, so its downstream assets turn stale one round later (or not at
        all, when the content did not change): repeat to a fixpoint."""
        from dagster import AssetSelection

        outcome = self.outcome()
        done: set = set()
        runs_of: dict = {}
        for _round in range(len(selected)):
            if stale_only:
                todo = self.stale(selected, runs_of)
            else:
                todo = AssetSelection.assets(*(selected - done)) \
                    .required_multi_asset_neighbors().resolve(self.graph) if selected - done else set()
            if not todo:
                break
            result = self.execute(_ready(self.graph, todo, selected), len(selected))
            outcome.run_id = result.run_id
            materialized = {e.asset_key for e in result.get_asset_materialization_events()}
            done |= materialized
            for key in materialized:
                runs_of[key] = runs_of.get(key, 0) + 1
            for evaluation in result.get_asset_check_evaluations():
                key = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                outcome.checks[key] = evaluation.passed
            if not result.success:
                outcome.success, outcome.failure = False, _failure_message(result)
                break
            if not stale_only:
                break
        outcome.materialized = sorted(k.to_user_string() for k in done)
        outcome.fresh = sorted(k.to_user_string() for k in selected - done)
        return outcome

    def execute(self, todo: set, n_selected: int):
        """One run of the pipeline job over ``todo``: in this process, or with
        ``JRR_EXECUTOR=multiprocess`` a process per step (jrr_pipeline/executors.py)."""
        from dagster import AssetKey

        from jrr_pipeline.executors import execute_pipeline_job, executor_name

        names = sorted(k.to_user_string() for k in todo)
        self.say(f"materializing {len(names)} of {n_selected} assets ({self.preset} preset): "
                 f"{', '.join(names)}")
        run = {"asset_selection": sorted(todo, key=AssetKey.to_user_string),
               "run_config": self.config,
               "tags": {"jrr/preset": self.preset, "jrr/dataset": self.dataset,
                        "jrr/source": "cli", PID_TAG: str(os.getpid()),
                        HOST_TAG: socket.gethostname()}}
        if executor_name() == "multiprocess":
            return execute_pipeline_job(self.instance, self.preset, self.data_dir,
                                        self.settings, **run)
        return self.defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=self.instance, raise_on_error=False, **run)


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
