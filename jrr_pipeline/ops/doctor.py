"""``jrr doctor``: which stores, executor and training launch this environment uses, and whether
the stores answer (``--check``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jrr_pipeline.resources.home import dagster_home, jrr_home
from jrr_pipeline.resources.stores import (
    Store,
    dagster_store,
    mask_password,
    mlflow_artifact_root,
    mlflow_store,
)


@dataclass
class Line:
    """One row of the report: what, which kind, where, chosen by which setting, check result."""

    name: str
    kind: str
    location: str
    source: str
    status: str = ""
    ok: bool = True


def _row(name: str, store: Store) -> Line:
    return Line(name, store.kind, store.shown, store.source)


def inspect_environment() -> list[Line]:
    """The stores and launch settings of this process's environment (nothing is contacted)."""
    from jrr_pipeline.executors import MAX_CONCURRENT_ENV, executor_name, max_concurrent
    from jrr_pipeline.resources.compute import ENV_FIELDS, Compute

    home, dhome = jrr_home(), dagster_home()
    warehouse = os.environ.get("JRR_WAREHOUSE", "")
    executor = executor_name()
    compute = Compute.from_env()
    launch = "in process" if not compute.distributed else (
        f"torchrun: {compute.nproc} process(es) x {compute.nnodes} node(s), this node "
        f"{compute.node_rank}, rendezvous {compute.rdzv_endpoint or 'standalone'}")
    return [
        Line("JRR_HOME", "files", str(home), "JRR_HOME" if os.environ.get("JRR_HOME") else
             "default"),
        Line("dagster instance", "files", str(dhome / "dagster.yaml"),
             "DAGSTER_HOME" if os.environ.get("DAGSTER_HOME") else "default"),
        _row("dagster storage", dagster_store(dhome)),
        _row("mlflow backend", mlflow_store(home)),
        _row("mlflow artifacts", mlflow_artifact_root(home)),
        Line("warehouse", "duckdb", str(Path(warehouse).expanduser().resolve()) if warehouse
             else str(home / "warehouse.duckdb"), "JRR_WAREHOUSE" if warehouse else "default"),
        Line("artifacts", "files", str(home / "artifacts"), "JRR_HOME"),
        Line("executor", executor, f"max_concurrent {max_concurrent()}" if
             executor == "multiprocess" else "steps in one process",
             "JRR_EXECUTOR" if os.environ.get("JRR_EXECUTOR") else "default"
             + (f", {MAX_CONCURRENT_ENV}" if os.environ.get(MAX_CONCURRENT_ENV) else "")),
        Line("training", "torchrun" if compute.distributed else "local", launch,
             ", ".join(env for env in ENV_FIELDS.values() if os.environ.get(env)) or "default"),
    ]


def reach_postgres(url: str) -> None:
    """Connect once with a short timeout (Dagster and MLflow retry for many seconds)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    psycopg2.connect(urlunsplit(urlsplit(url)._replace(scheme="postgresql")),
                     connect_timeout=5).close()


def check_dagster() -> str:
    from dagster import DagsterInstance

    store = dagster_store(dagster_home())
    if store.kind == "postgresql":
        reach_postgres(store.location)
    with DagsterInstance.get() as instance:
        return f"ok: {instance.get_runs_count()} runs"


def check_mlflow() -> str:
    from mlflow import MlflowClient

    from jrr_pipeline.resources.stores import mlflow_tracking_uri

    store = mlflow_store(jrr_home())
    if store.kind == "postgresql":
        reach_postgres(store.location)
    client = MlflowClient(mlflow_tracking_uri(jrr_home()))
    runs = sum(len(client.search_runs([e.experiment_id], max_results=1000))
               for e in client.search_experiments())
    models = len(client.search_registered_models())
    return f"ok: {runs} runs, {models} registered models"


CHECKS: dict[str, Callable[[], str]] = {"dagster storage": check_dagster,
                                        "mlflow backend": check_mlflow}


def run_checks(lines: list[Line]) -> list[Line]:
    """Contact the Dagster and MLflow stores; each line gets 'ok: ...' or the error."""
    for line in lines:
        check = CHECKS.get(line.name)
        if check is None:
            continue
        try:
            line.status = check()
        except Exception as err:  # any driver or server error is the answer here
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            line.status, line.ok = f"FAILED: {mask_password(first)}", False
    return lines


def render(lines: list[Line]) -> str:
    width = max(len(line.name) for line in lines)
    kind = max(len(line.kind) for line in lines)
    out = []
    for line in lines:
        text = f"{line.name:<{width}}  {line.kind:<{kind}}  {line.location}  [{line.source}]"
        out.append(text + (f"  {line.status}" if line.status else ""))
    return "\n".join(out)
