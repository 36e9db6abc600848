"""Swappable Dagster resources; each has embedded defaults under JRR_HOME."""

from jrr_pipeline.resources.artifacts import ArtifactStore, swap_dir
from jrr_pipeline.resources.compute import Compute
from jrr_pipeline.resources.dataset import DatasetSource
from jrr_pipeline.resources.tracking import MLflowTracking
from jrr_pipeline.resources.warehouse import SCHEMAS, Warehouse

__all__ = [
    "SCHEMAS",
    "ArtifactStore",
    "Compute",
    "DatasetSource",
    "MLflowTracking",
    "Warehouse",
    "swap_dir",
]
