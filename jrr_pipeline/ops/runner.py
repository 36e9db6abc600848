"""Materialize the stale part of the asset graph in-process, on the project's Dagster instance."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jrr_pipeline.ml.settings.base import shown
from jrr_pipeline.ops.checks import CheckReport, check_report
from jrr_pipeline.ops.staleness import stale_or_missing
from jrr_pipeline.pipeline import PIPELINE_JOB, build_definitions

PID_TAG = "jrr/pid"
HOST_TAG = "jrr/host"
# errors whose message says all (file:line: field: problem, a busy lock, ...): shown without
# their class name; anything else is shown as "step: Class: message" with a --verbose hint
USER_ERRORS = {"DataFormatError", "ValueError", "FileNotFoundError", "ResourceBusyError",
               "WarehouseError"}


@dataclass
class RunOutcome:
    success: bool = True
    run_id: str | None = None
    materialized: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    failure: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    check_reports: dict[str, CheckReport] = field(default_factory=dict)  # the latest of each
    report_path: Path | None = None
    lost: dict[str, str] = field(default_factory=dict)  # asset -> why its storage counts as lost
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
    verbose: bool = False,
) -> RunOutcome:
    """Observe the dataset files, then materialize the selected assets that are stale or missing
    (every selected one when ``stale_only`` is False); ``dry_run`` only reports what is stale.
    ``verbose`` logs Dagster's full event text (stack traces included)."""
    session = _Session(data_dir, preset, dataset_name, settings, run_config, echo,
                       instance or project_instance(), verbose)
    selected = session.select(select)
    failed = session.observe()
    if failed is not None:
        return failed
    selected = session.verify(selected)
    if dry_run:
        return session.dry_run(selected)
    return session.materialize(selected, stale_only)


def project_instance():
    """``DagsterInstance.get()`` under a file lock: two ``jrr run`` processes that create a
    fresh sqlite instance at once race on its schema (``UNIQUE constraint failed:
    alembic_version``); the second one waits until the first has made it."""
    from dagster import DagsterInstance

    from jrr_pipeline.resources.locks import exclusive

    home = Path(os.environ["DAGSTER_HOME"])
    with exclusive(home / ".instance.lock", f"Dagster instance {home}", owner="jrr run"):
        return DagsterInstance.get()


class _Session:
    """One ``jrr run``: the Definitions, resources and instance it works with."""

    def __init__(self, data_dir: str, preset: str, dataset_name: str, settings: dict | None,
                 run_config: dict | None, echo: Callable[[str], None] | None, instance,
                 verbose: bool) -> None:
        self.data_dir, self.preset, self.instance = data_dir, preset, instance
        self.settings = settings
        self.say = echo or (lambda _msg: None)
        self.defs = build_definitions(preset, data_dir, settings, dataset_name)
        self.graph = self.defs.resolve_asset_graph()
        self.resources = self.defs.resources
        self.dataset = self.resources["dataset"].dataset_name
        self.level = "INFO" if echo or verbose else "CRITICAL"
        self.lost: dict = {}  # asset key -> why its storage counts as lost (see verify)
        self.config = dict(run_config or {})
        self.config.setdefault("loggers", {"console": {"config": {
            "log_level": self.level, "verbose": verbose}}})

    def observe(self) -> RunOutcome | None:
        """Fail the runs a killed ``jrr run`` left behind, check what can be checked without
        reading rows (layout, files, column mapping), then hash the dataset files. A failed
        observation is returned as the outcome."""
        from jrr_pipeline.assets.data import dataset_files
        from jrr_pipeline.dagster_compat import observe

        for run_id in reap_dead_cli_runs(self.instance):
            self.say(f"run {run_id} was killed without finishing: marked failed, its pool slots "
                     f"freed")
        self.resources["dataset"].check()
        self.say(f"observing {self.data_dir} ...")
        result = observe([dataset_files], instance=self.instance,
                         resources={"dataset": self.resources["dataset"]},
                         run_config={"loggers": {"console": {"config": {"log_level": self.level}}}},
                         raise_on_error=False)
        if result.success:
            return None
        return RunOutcome(success=False, run_id=result.run_id, failure=_failure_message(result))

    def select(self, select: str) -> set:
        from dagster import AssetSelection

        try:
            selected = AssetSelection.from_string(select).resolve(self.graph)
        except Exception:  # Dagster raises several error types for a bad selection string
            names = ", ".join(sorted(k.to_user_string() for k in self.graph.materializable_asset_keys))
            raise ValueError(f"--select {shown(select)}: not a selection of these assets: {names} "
                             f"(e.g. 'joint_retriever*': it and everything below it)") from None
        selected = {k for k in selected if k in self.graph.materializable_asset_keys}
        if not selected:
            raise ValueError(f"--select {select!r} matches no asset")
        return selected

    def verify(self, selected: set) -> set:
        """Check the storage of the materialized assets of ``selected`` and of their ancestors
        against their records (``ops.storage``); the lost ones count as stale until they run
        once. Returns ``selected`` with the lost ancestors it needs."""
        from dagster import AssetSelection

        from jrr_pipeline.ops.storage import lost_storage

        scope = AssetSelection.assets(*selected).upstream().resolve(self.graph) \
            & self.graph.materializable_asset_keys
        self.lost = lost_storage(self.instance, scope, self.resources["warehouse"],
                                 self.resources["artifacts"], self.dataset)
        for key, why in self.lost.items():
            self.say(f"{key.to_user_string()}: {why}: rebuilding it")
        return selected | set(self.lost)

    def outcome(self) -> RunOutcome:
        report = self.resources["artifacts"].report_dir(self.dataset) / "evaluation.json"
        return RunOutcome(report_path=report,
                          lost={k.to_user_string(): why for k, why in self.lost.items()})

    def stale(self, selected: set, runs_of: dict) -> set:
        """Stale or missing assets of ``selected`` and lost ones not rebuilt yet (with their
        multi-asset neighbours); an asset that ran twice and is still stale is left out (it
        would only loop)."""
        from dagster import AssetSelection

        status = stale_or_missing(self.defs, self.instance, selected)
        todo = {k for k, s in status.items() if s != "FRESH" and runs_of.get(k, 0) < 2}
        todo |= {k for k in self.lost if not runs_of.get(k)}
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
                report = check_report(evaluation)
                outcome.checks[report.key] = report.passed
                outcome.check_reports[report.key] = report
            blocked = [r for r in outcome.check_reports.values() if r.blocking]
            if not result.success or blocked:
                outcome.success = False
                outcome.failure = (f"{blocked[0].line()}; what lies below it was not run"
                                   if blocked else _failure_message(result))
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
    """The user-code error behind the first failed step, on one line: its own message for the
    errors that say all ('corpus.jsonl:7: field ...'), else 'step: Class: message'."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            if error is None:
                return event.message or "step failed"
            message = re.sub(rf"^[\w.]*{re.escape(error.cls_name)}: ", "", error.message.strip())
            message = message.split("\n", 1)[0]
            if error.cls_name in USER_ERRORS:
                return message
            return (f"{event.step_key}: {error.cls_name}: {message} (jrr run --verbose shows "
                    f"the stack trace)")
    return "run failed"
