"""What the asset modules share: pools, data versions, MLflow tags, the Config of a stage's
settings and the training launch."""

from __future__ import annotations

import copy
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pydantic
from dagster import AssetExecutionContext, AssetKey, Config

from jrr_pipeline.ml.settings import STAGES, Settings

# Materialization metadata: the listing checksum (ml.io.directory_manifest) of the artifact
# directory an asset wrote, which `jrr run` verifies before it decides what is stale.
MANIFEST_KEY = "jrr/manifest"
# Dagster concurrency pools (limit 1 each in the instance's dagster.yaml written by paths.py).
DEVICE_POOL = "jrr_device"  # steps that train, encode or rerank
WAREHOUSE_POOL = "jrr_warehouse"  # steps that only write DuckDB tables / BM25 files


def frame_version(frame: pl.DataFrame) -> str:
    """A content hash of a table (row order matters), used as its Dagster data version.

    Hashes the CSV serialisation slice by slice: stable across library versions, bounded memory.
    """
    digest = hashlib.sha256(",".join(frame.columns).encode())
    for chunk in frame.iter_slices(200_000):
        digest.update(chunk.write_csv(include_header=False).encode())
    return digest.hexdigest()[:16]


def manifest(path: Path) -> dict[str, str]:
    """Metadata recording the artifact directory ``path`` as written (see ``MANIFEST_KEY``)."""
    from jrr_pipeline.ml.io import directory_manifest

    return {MANIFEST_KEY: directory_manifest(path)}


def dagster_tags(context: AssetExecutionContext) -> dict[str, str]:
    """Tags that tie an MLflow run to the Dagster run and the asset(s) that made it."""
    tags = {"dagster.run_id": context.run.run_id}
    keys = sorted(context.selected_asset_keys, key=lambda k: k.to_user_string())
    tags["dagster.asset_key"] = ",".join(k.to_user_string() for k in keys)
    for key in keys:
        version = context.assets_def.code_versions_by_key.get(key)
        if version:
            tags[f"dagster.code_version.{key.to_user_string()}"] = version
    for key, version in input_data_versions(context).items():
        tags[f"dagster.input_data_version.{key}"] = version
    return tags


def input_data_versions(context: AssetExecutionContext) -> dict[str, str]:
    """The current data version of every upstream asset of this step (what the step reads)."""
    from jrr_pipeline.dagster_compat import extract_data_version_from_entry

    upstream: set[AssetKey] = set()
    for key in context.selected_asset_keys:
        upstream |= set(context.assets_def.asset_deps.get(key, ()))
    upstream -= set(context.selected_asset_keys)
    versions = {}
    for key in sorted(upstream, key=AssetKey.to_user_string):
        record = context.instance.get_latest_data_version_record(key)
        version = extract_data_version_from_entry(record.event_log_entry) if record else None
        if version is not None:
            versions[key.to_user_string()] = version.value
    return versions


class StageConfig(Config):
    """Base of every asset's Config: ``settings()`` returns the validated stage dataclass."""

    stage_name: ClassVar[str] = ""

    def settings(self) -> Settings:
        return STAGES[self.stage_name].from_dict(self.model_dump(), "run config")


def stage_config(settings: Settings) -> type[StageConfig]:
    """The Dagster Config of ``settings``' stage: one field per knob, the resolved values as
    defaults and the knob's help as description (what the UI's launchpad shows)."""
    cls = type(settings)
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in cls.knobs():
        value = getattr(settings, f.name)
        default = (pydantic.Field(default_factory=lambda v=value: copy.deepcopy(v),
                                  description=f.metadata.get("help"))
                   if isinstance(value, list | dict) else
                   pydantic.Field(default=value, description=f.metadata.get("help")))
        fields[f.name] = (_config_type(hints[f.name]), default)
    base = type(f"{cls.__name__}Base", (StageConfig,), {"stage_name": cls.stage,
                                                        "__module__": __name__})
    return pydantic.create_model(cls.__name__.removesuffix("Settings") + "Config", __base__=base,
                                 __module__=__name__, **fields)


def _config_type(hint: Any) -> Any:
    """A type Dagster's Config accepts: a list of ``Literal`` choices becomes a list of str
    (``settings()`` still checks the choices)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args and typing.get_origin(args[0]) is typing.Literal:
        return list[str]
    return hint


def registered_model_name(dataset: str, asset_name: str) -> str:
    """Model Registry name of a trained asset, e.g. 'jrr-scifact-warmup_retriever'."""
    return f"jrr-{dataset}-{asset_name}"


def state_dir_for(root: Path, asset: str, key: dict[str, Any]) -> Path:
    """Training state lives beside the artifacts, keyed by ``key`` (settings and inputs): a
    changed run starts afresh, an unchanged one resumes where a killed run stopped."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return root / ".state" / f"{asset}-{digest[:12]}"


def run_training(context: AssetExecutionContext, stage: str, settings: Settings,
                 tables: dict[str, pl.DataFrame], artifacts_root: Path, output_dir: Path,
                 compute, models: dict[str, str] | None = None, eval_split: str | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write a run file for ``stage`` and train it in this process or under torchrun
    (``compute.nproc``); returns (result, metric records). The state directory is keyed by the
    settings and the upstream data versions, so a killed run resumes and a changed one does not."""
    from jrr_pipeline.ml.training.launch import launch, read_metrics, write_run_file

    key = {"settings": settings.to_dict(), "inputs": input_data_versions(context)}
    state = state_dir_for(artifacts_root, stage, key)
    run_file = write_run_file(state / "run", stage, settings, tables, output_dir,
                              state / "train", models=models, eval_split=eval_split)
    compute.apply_threads()
    where = f"torchrun with {compute.nproc} processes" if compute.nproc > 1 else "in-process"
    if compute.nnodes > 1:
        where = (f"torchrun with {compute.nproc} processes on each of {compute.nnodes} nodes; "
                 f"start the others with: {worker_hint(compute, run_file)}")
    context.log.info(f"{stage}: training {where} (run file {run_file})")
    result = launch(run_file, compute.nproc, compute.rendezvous())
    return result, read_metrics(run_file.parent / "metrics.jsonl")


def worker_hint(compute, run_file: Path) -> str:
    """The command node RANK (1 .. nnodes - 1) runs to join this training; the run file must
    be on a filesystem all nodes share (JRR_HOME)."""
    from jrr_pipeline.ml.training.distributed import Rendezvous, torchrun_command

    second = Rendezvous(compute.nnodes, 1, compute.rdzv_endpoint)
    cmd = torchrun_command(compute.nproc, "jrr_pipeline.ml.training.launch",
                           ["--config", str(run_file)], second)
    return " ".join(cmd).replace("--node_rank=1", "--node_rank=RANK")


def log_params(params: dict[str, Any]) -> None:
    """Settings as MLflow params (nested values as JSON, each cut to MLflow's 500 characters)."""
    import mlflow

    flat = {k: (json.dumps(v) if isinstance(v, dict | list | tuple) else v)
            for k, v in params.items()}
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})


def label_deps(settings: dict[str, Settings]) -> list[str]:
    """``['generated_queries']`` where the training stages read generated queries (labels mode
    augment or none), else []."""
    return [] if settings["generation"].labels == "only" else ["generated_queries"]


def label_settings(settings: dict[str, Settings]) -> list[Settings]:
    """The generation settings where they change what the training stages read (their code
    versions include them), else [] (so `only` mode's code versions stay as they were)."""
    return [] if settings["generation"].labels == "only" else [settings["generation"]]


def training_tables(warehouse, generation: Settings) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(queries, qrels) as the training stages see them in ``generation.labels`` mode
    (``ml.generation.setup.training_tables``)."""
    from jrr_pipeline.ml.generation.setup import training_tables as compose

    generated = None if generation.labels == "only" else warehouse.table("generated_queries")
    return compose(generation.labels, warehouse.table("queries"), warehouse.table("qrels"),
                   generated, generation.augment_weight, generation.seed)
