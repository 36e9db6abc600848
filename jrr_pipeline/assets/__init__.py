"""Thin Dagster assets, one module per stage; ``build_assets`` applies a preset's defaults."""

from __future__ import annotations

from jrr_pipeline.assets.candidates import CANDIDATES_CHECKS, build_candidates_assets
from jrr_pipeline.assets.data import DATA_CHECKS, build_data_assets, dataset_files
from jrr_pipeline.assets.dense import build_dense_assets
from jrr_pipeline.assets.evaluation import build_evaluation_assets
from jrr_pipeline.assets.joint import build_joint_assets
from jrr_pipeline.assets.negatives import NEGATIVES_CHECKS, build_negatives_assets
from jrr_pipeline.assets.serving import SERVING_CHECKS, build_serving_assets
from jrr_pipeline.assets.warmup import build_warmup_assets


def build_assets(preset: str) -> list:
    """All asset definitions (the observable source included) with ``preset``'s config defaults."""
    return [
        dataset_files,
        *build_data_assets(preset),
        *build_negatives_assets(preset),
        *build_warmup_assets(preset),
        *build_dense_assets(preset),
        *build_candidates_assets(preset),
        *build_joint_assets(preset),
        *build_serving_assets(preset),
        *build_evaluation_assets(preset),
    ]


ASSET_CHECKS = [*DATA_CHECKS, *NEGATIVES_CHECKS, *CANDIDATES_CHECKS, *SERVING_CHECKS]

__all__ = ["ASSET_CHECKS", "build_assets"]
