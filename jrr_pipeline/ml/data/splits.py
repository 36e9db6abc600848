"""The dev split that model selection reads, carved from train when a dataset has none."""

from __future__ import annotations

import hashlib
import math

import polars as pl

DATASET = "dataset"
CARVED = "carved from train"


def carve_dev(qrels: pl.DataFrame, fraction: float, min_queries: int,
              seed: int = 0) -> tuple[pl.DataFrame, str | None]:
    """``qrels`` with a dev split, and where it came from.

    A dataset with dev qrels keeps them (origin "dataset"). Otherwise the train queries are
    ordered by a hash of (seed, query id), so the carve depends on neither row order nor the
    other splits, and the first max(ceil(fraction * n), min_queries) of them, at most n // 2,
    move to dev with all their rows (origin "carved from train"). ``fraction`` 0 or no train
    queries: no dev split (origin None).
    """
    splits = set(qrels["split"].unique().to_list())
    if "dev" in splits:
        return qrels, DATASET
    train = sorted(set(qrels.filter(pl.col("split") == "train")["query_id"].to_list()))
    if fraction <= 0 or len(train) < 2:
        return qrels, None
    count = min(max(math.ceil(fraction * len(train)), min_queries), len(train) // 2)
    ranked = sorted(train, key=lambda qid: hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest())
    dev = ranked[:count]
    carved = qrels.with_columns(
        split=pl.when((pl.col("split") == "train") & pl.col("query_id").is_in(dev))
        .then(pl.lit("dev")).otherwise(pl.col("split")))
    return carved, CARVED
