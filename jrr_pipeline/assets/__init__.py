"""Thin Dagster assets, one module per group; ``build_assets`` gives each its resolved settings."""

from __future__ import annotations

from jrr_pipeline.assets.candidates import CANDIDATES_CHECKS, build_candidates_assets
from jrr_pipeline.assets.data import DATA_CHECKS, build_data_assets, dataset_files
from jrr_pipeline.assets.evaluation import build_evaluation_assets
from jrr_pipeline.assets.generation import build_generation_assets, generation_checks
from jrr_pipeline.assets.joint import build_joint_assets
from jrr_pipeline.assets.negatives import (
    NEGATIVES_CHECKS,
    build_dense_assets,
    build_negatives_assets,
)
from jrr_pipeline.assets.serving import SERVING_CHECKS, build_serving_assets
from jrr_pipeline.assets.warmup import build_warmup_assets
from jrr_pipeline.ml.settings import Settings


def build_assets(settings: dict[str, Settings]) -> list:
    """All asset definitions (the observable source included); ``settings`` holds every stage's
    resolved settings (``jrr_pipeline.settings.resolve_settings``), their Config defaults."""
    return [
        dataset_files,
        *build_data_assets(settings),
        *build_negatives_assets(settings),
        *build_generation_assets(settings),
        *build_warmup_assets(settings),
        *build_dense_assets(settings),
        *build_candidates_assets(settings),
        *build_joint_assets(settings),
        *build_serving_assets(settings),
        *build_evaluation_assets(settings),
    ]


ASSET_CHECKS = [*DATA_CHECKS, *NEGATIVES_CHECKS, *CANDIDATES_CHECKS, *SERVING_CHECKS]


def build_asset_checks(settings: dict[str, Settings]) -> list:
    """The fixed checks plus those of the stages a setting adds (the generated queries)."""
    return [*ASSET_CHECKS, *generation_checks(settings)]


__all__ = ["ASSET_CHECKS", "build_asset_checks", "build_assets"]
