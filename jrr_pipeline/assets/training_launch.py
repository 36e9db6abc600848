"""Launch a warm-up training run (in-process or under torchrun) and bring its results back.

The asset writes the tables the run needs as Parquet plus a JSON run config into a work directory
and calls ``jrr_pipeline.ml.training.run`` on it: in this process when one process is asked for,
under ``torchrun --nproc_per_node=N`` otherwise. The same files drive both paths.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext

from jrr_pipeline.resources import Compute


def state_dir_for(root: Path, asset: str, config: dict[str, Any]) -> Path:
    """Training state lives beside the artifacts, keyed by the config: a changed config starts afresh,
    an unchanged one resumes where a killed run stopped."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return root / ".state" / f"{asset}-{digest[:12]}"


def launch_training(
    context: AssetExecutionContext,
    kind: str,
    work_dir: Path,
    tables: dict[str, pl.DataFrame],
    run_config: dict[str, Any],
    compute: Compute,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one warm-up training; returns (TrainResult as a dict, per-step metric records)."""
    from jrr_pipeline.ml.training.distributed import launch_torchrun
    from jrr_pipeline.ml.training.run import run

    work_dir.mkdir(parents=True, exist_ok=True)
    data = {}
    for name, frame in tables.items():
        path = work_dir / f"{name}.parquet"
        frame.write_parquet(path)
        data[name] = str(path)
    metrics_file = work_dir / "metrics.jsonl"
    result_file = work_dir / "result.json"
    metrics_file.unlink(missing_ok=True)
    result_file.unlink(missing_ok=True)
    config = {**run_config, "task": kind, "data": data, "metrics_file": str(metrics_file),
              "result_file": str(result_file)}
    config_path = work_dir / "run_config.json"
    config_path.write_text(json.dumps(config, indent=2, default=str))

    started = time.perf_counter()
    compute.apply_threads()
    if compute.nproc > 1:
        context.log.info(f"{kind}: launching torchrun with {compute.nproc} processes")
        proc = launch_torchrun(compute.nproc, "jrr_pipeline.ml.training.run",
                               ["--task", kind, "--config", str(config_path)])
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun {kind} training failed with exit code {proc.returncode}")
    else:
        context.log.info(f"{kind}: training in-process (config {config_path})")
        run(kind, config_path)
    seconds = time.perf_counter() - started
    result = json.loads(result_file.read_text())
    result["wall_s_total"] = round(seconds, 2)
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if metrics_file.exists() else []
    return result, records


def log_training_to_mlflow(records: list[dict[str, Any]], params: dict[str, Any],
                           result: dict[str, Any], checkpoint: Path) -> None:
    """Params, per-step metrics, the final result and the checkpoint folder on the active MLflow run."""
    import mlflow

    flat = {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in params.items()}
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    for record in records:
        mlflow.log_metrics({k: float(v) for k, v in record["metrics"].items()}, step=int(record["step"]))
    mlflow.log_metrics({"wall_s": float(result.get("wall_s", 0.0)),
                        "final_loss": float(result.get("final_loss") or 0.0)})
    mlflow.log_artifacts(str(checkpoint), artifact_path="checkpoint")
