"""The dev split carved from train: deterministic, sized as asked, and blind to the test split."""

from __future__ import annotations

import polars as pl

from jrr_pipeline.ml.data.splits import CARVED, DATASET, carve_dev


def qrels(n_train: int = 100, n_test: int = 20) -> pl.DataFrame:
    rows = [(f"t{i}", f"d{i}", 1, "train") for i in range(n_train)]
    rows += [(f"t{i}", f"e{i}", 1, "train") for i in range(0, n_train, 7)]  # second positives
    rows += [(f"x{i}", f"d{i}", 1, "test") for i in range(n_test)]
    return pl.DataFrame(rows, schema=["query_id", "doc_id", "relevance", "split"], orient="row")


def dev_queries(frame: pl.DataFrame) -> set[str]:
    return set(frame.filter(pl.col("split") == "dev")["query_id"].to_list())


def test_a_share_of_train_queries_moves_to_dev_with_all_their_rows():
    carved, origin = carve_dev(qrels(), fraction=0.1, min_queries=5)
    assert origin == CARVED
    dev = dev_queries(carved)
    assert len(dev) == 10
    train = set(carved.filter(pl.col("split") == "train")["query_id"].to_list())
    assert not dev & train and len(dev | train) == 100
    assert carved.filter(pl.col("split") == "test").equals(
        qrels().filter(pl.col("split") == "test"))
    assert carved.height == qrels().height


def test_the_carve_is_deterministic_and_ignores_row_order_and_the_test_split():
    base = dev_queries(carve_dev(qrels(), 0.1, 5)[0])
    shuffled = qrels().sample(fraction=1.0, shuffle=True, seed=3)
    assert dev_queries(carve_dev(shuffled, 0.1, 5)[0]) == base
    other_test = qrels().with_columns(
        doc_id=pl.when(pl.col("split") == "test").then(pl.lit("z")).otherwise(pl.col("doc_id")))
    assert dev_queries(carve_dev(other_test, 0.1, 5)[0]) == base
    assert dev_queries(carve_dev(qrels(), 0.1, 5, seed=1)[0]) != base


def test_minimum_size_and_the_half_cap():
    assert len(dev_queries(carve_dev(qrels(100), 0.1, 30)[0])) == 30
    assert len(dev_queries(carve_dev(qrels(40), 0.1, 30)[0])) == 20


def test_a_dataset_dev_split_is_kept_and_fraction_zero_carves_nothing():
    with_dev = qrels().with_columns(
        split=pl.when(pl.col("query_id") == "t1").then(pl.lit("dev")).otherwise(pl.col("split")))
    kept, origin = carve_dev(with_dev, 0.1, 5)
    assert origin == DATASET and kept.equals(with_dev)
    same, origin = carve_dev(qrels(), 0.0, 5)
    assert origin is None and same.equals(qrels())
