"""Builds the one ``Definitions`` object from a preset and a dataset directory."""

from __future__ import annotations

import os

from dagster import AssetSelection, Definitions, define_asset_job

from jrr_pipeline.assets import build_asset_checks, build_assets
from jrr_pipeline.automation import build_automation
from jrr_pipeline.console import console_logger
from jrr_pipeline.dagster_compat import forget_closed_defs_state_storage
from jrr_pipeline.executors import executor_def
from jrr_pipeline.ml.settings import DatasetSettings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import check_preset, load_settings, resolve_settings

PIPELINE_JOB = "jrr_pipeline_job"


def build_resources(data_dir: str | None = None, dataset_name: str = "",
                    dataset: DatasetSettings | None = None) -> dict:
    """The resources; ``dataset`` (the ``dataset`` settings) says how the files are read."""
    dataset = dataset or DatasetSettings()
    return {
        "dataset": DatasetSource(data_dir=data_dir or os.environ.get("JRR_DATA_DIR", ""),
                                 name=dataset_name or os.environ.get("JRR_DATASET_NAME", ""),
                                 format=dataset.format, columns=dataset.columns),
        "warehouse": Warehouse(path=os.environ.get("JRR_WAREHOUSE", "")),
        "artifacts": ArtifactStore(),
        "mlflow_tracking": MLflowTracking(),  # the URI: resources/stores.py
        "compute": Compute.from_env(),  # JRR_NPROC, JRR_NNODES, JRR_NODE_RANK, JRR_RDZV_ENDPOINT
    }


def build_definitions(preset: str | None = None, data_dir: str | None = None,
                      settings: dict | None = None, dataset_name: str = "",
                      executor: str | None = None) -> Definitions:
    """The code location. ``preset`` defaults to $JRR_PRESET (else ``cpu``); ``settings``
    (stage -> field -> value) default to the TOML file named by $JRR_SETTINGS; ``executor``
    (in_process | multiprocess) to $JRR_EXECUTOR (else in_process). Every stage's settings are
    resolved and validated here, before any asset runs."""
    preset = check_preset(preset or os.environ.get("JRR_PRESET", "cpu"))
    forget_closed_defs_state_storage()
    user = load_settings() if settings is None else settings
    resolved = resolve_settings(preset, user)
    assets = build_assets(resolved)
    pipeline = define_asset_job(
        PIPELINE_JOB,
        selection=AssetSelection.all(),
        description=f"Every stage, data to report ({preset} preset defaults)",
        tags={"jrr/preset": preset},
    )
    schedules, sensors = build_automation(PIPELINE_JOB, preset)
    return Definitions(
        assets=assets,
        asset_checks=build_asset_checks(resolved),
        jobs=[pipeline],
        schedules=schedules,
        sensors=sensors,
        resources=build_resources(data_dir, dataset_name, resolved["dataset"]),
        loggers={"console": console_logger},
        # torch is heavy and the default machine has 2 cores: steps run in one process unless
        # JRR_EXECUTOR=multiprocess (jrr_pipeline/executors.py).
        executor=executor_def(executor),
    )

