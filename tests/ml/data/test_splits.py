"""One split order for every layout: train, dev, test, then anything else."""

from __future__ import annotations

from jrr_pipeline.ml.data.textio import SPLIT_ORDER, normalize_split, split_rank


def test_split_rank_orders_train_dev_test_then_the_rest() -> None:
    names = ["test", "other", None, "validation", "train", "dev"]
    ranked = sorted(names, key=lambda n: split_rank(normalize_split(n) if n else None))
    assert ranked[:4] == ["train", "validation", "dev", "test"]
    assert {split_rank("other"), split_rank(None)} == {len(SPLIT_ORDER)}
