"""Which Dagster executor runs the pipeline's steps: in-process (the default) or multiprocess.

``JRR_EXECUTOR=multiprocess`` gives every step its own process (Dagster's ``multiprocess_executor``,
at most ``JRR_MAX_CONCURRENT`` at a time, default: the CPU count), so independent stages can run
side by side; the instance's pools ``jrr_device`` and ``jrr_warehouse`` (limit 1 each, written
into dagster.yaml by ``resources.home``) still keep two training / encoding steps, or two DuckDB
writers, apart. Step processes fork from a server that imported torch and the code location once
(``PRELOAD``); each still costs a few seconds, which is why a 2-core machine keeps the in-process
default.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTOR_ENV = "JRR_EXECUTOR"
MAX_CONCURRENT_ENV = "JRR_MAX_CONCURRENT"
EXECUTORS = ("in_process", "multiprocess")
# Step processes fork from a server that has imported these once (Dagster's forkserver start
# method), instead of each importing torch, transformers and the assets again.
PRELOAD = ("jrr_pipeline.pipeline", "jrr_pipeline.ml.modeling.retriever",
           "jrr_pipeline.ml.modeling.reranker", "jrr_pipeline.ml.index", "mlflow")


def executor_name() -> str:
    """``$JRR_EXECUTOR`` (``in_process`` when unset); a ValueError names the choices."""
    name = os.environ.get(EXECUTOR_ENV, "").strip().replace("-", "_") or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def max_concurrent() -> int:
    raw = os.environ.get(MAX_CONCURRENT_ENV, "").strip()
    try:
        value = int(raw) if raw else (os.cpu_count() or 1)
    except ValueError:
        raise ValueError(f"{MAX_CONCURRENT_ENV}={raw!r}: expected a whole number") from None
    if value < 1:
        raise ValueError(f"{MAX_CONCURRENT_ENV}={raw!r}: must be >= 1")
    return value


def executor_def(name: str | None = None) -> ExecutorDefinition:
    """The Dagster executor called ``name`` (default: ``executor_name()``)."""
    name = name or executor_name()
    if name == "multiprocess":
        config = {"max_concurrent": max_concurrent(),
                  "start_method": {"forkserver": {"preload_modules": list(PRELOAD)}}}
        return multiprocess_executor.configured(config, name="jrr_multiprocess")
    return in_process_executor


def pipeline_job(preset: str, data_dir: str, settings: dict[str, Any] | None, executor: str):
    """The pipeline job as ``build_definitions`` makes it; step processes rebuild it from these
    (JSON) arguments, see ``execute_pipeline_job``."""
    from jrr_pipeline.pipeline import PIPELINE_JOB, build_definitions

    defs = build_definitions(preset, data_dir, settings, executor=executor)
    return defs.resolve_job_def(PIPELINE_JOB)


def execute_pipeline_job(instance, preset: str, data_dir: str, settings: dict[str, Any] | None,
                         **run: Any):
    """Run the pipeline job out of process with the multiprocess executor (``dagster.execute_job``
    over a reconstructable job; ``run``: asset_selection, run_config, tags). Needs a persistent
    instance: the step processes report to it."""
    from dagster import build_reconstructable_job, execute_job

    job = build_reconstructable_job(__name__, pipeline_job.__name__,
                                    reconstructable_args=(preset, data_dir, settings or {},
                                                          "multiprocess"))
    return execute_job(job, instance=instance, raise_on_error=False, **run)
