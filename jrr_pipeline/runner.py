"""Materialize the stale part of the asset graph in-process, on the project's Dagster instance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jrr_pipeline.pipeline import PIPELINE_JOB, build_definitions
from jrr_pipeline.staleness import stale_or_missing


@dataclass
class RunOutcome:
    success: bool = True
    run_id: str | None = None
    materialized: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    failure: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    report_path: Path | None = None


def run_pipeline(
    data_dir: str,
    preset: str = "cpu",
    select: str = "*",
    stale_only: bool = True,
    dataset_name: str = "",
    run_config: dict | None = None,
    echo: Callable[[str], None] | None = print,
    instance=None,
) -> RunOutcome:
    """Observe the dataset files, then materialize the selected assets that are stale or missing."""
    from dagster import AssetKey, AssetSelection, DagsterInstance
    from dagster._core.definitions.observe import observe  # not re-exported by dagster 1.13

    from jrr_pipeline.assets.data import dataset_files
    from jrr_pipeline.pipeline import build_resources

    say = echo or (lambda _msg: None)
    defs = build_definitions(preset, data_dir)
    resources = build_resources(data_dir, dataset_name)
    instance = instance or DagsterInstance.get()
    outcome = RunOutcome()

    config = dict(run_config or {})
    config.setdefault("loggers", {"console": {"config": {"log_level": "INFO" if echo else "ERROR"}}})
    say(f"observing {data_dir} ...")
    observe([dataset_files], instance=instance, resources={"dataset": resources["dataset"]},
            run_config={"loggers": config["loggers"]})

    graph = defs.resolve_asset_graph()
    selected = AssetSelection.from_string(select).resolve(graph)
    selected = {k for k in selected if k in graph.materializable_asset_keys}
    if not selected:
        raise ValueError(f"--select {select!r} matches no asset")
    dataset = resources["dataset"].dataset_name
    outcome.report_path = resources["artifacts"].report_dir(dataset) / "evaluation.json"
    job = defs.resolve_job_def(PIPELINE_JOB)
    done: set[AssetKey] = set()
    # A stale asset's new data version is only known once it has run, so its downstream assets turn
    # stale one round later (or not at all, when the content did not change): repeat to a fixpoint.
    for _round in range(len(selected)):
        if stale_only:
            status = stale_or_missing(defs, instance, selected - done)
            todo = {k for k, s in status.items() if s != "FRESH"}
        else:
            todo = selected - done
        if not todo:
            break
        # corpus, queries and qrels are written in one transaction by one multi-asset
        todo = AssetSelection.assets(*todo).required_multi_asset_neighbors().resolve(graph)
        names = sorted(k.to_user_string() for k in todo)
        say(f"materializing {len(names)} of {len(selected)} assets ({preset} preset): {', '.join(names)}")
        result = job.execute_in_process(
            instance=instance,
            asset_selection=sorted(todo, key=AssetKey.to_user_string),
            run_config=config,
            tags={"jrr/preset": preset, "jrr/dataset": dataset, "jrr/source": "cli"},
            raise_on_error=False,
        )
        outcome.run_id = result.run_id
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        done |= materialized
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
