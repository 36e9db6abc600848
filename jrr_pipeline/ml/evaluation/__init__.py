"""Evaluation: ir-measures metrics and the markdown/JSON/PNG report."""

from jrr_pipeline.ml.evaluation.metrics import (
    DEFAULT_MEASURES,
    eval_split,
    evaluate,
    monitor_split,
    per_query,
    selection_info,
)
from jrr_pipeline.ml.evaluation.report import markdown_table, read_report, write_report

__all__ = [
    "DEFAULT_MEASURES",
    "eval_split",
    "evaluate",
    "markdown_table",
    "monitor_split",
    "per_query",
    "read_report",
    "selection_info",
    "write_report",
]
