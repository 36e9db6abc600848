"""Deterministic epoch order, batch counts and DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest

from jrr_pipeline.ml.training.data import (
    batches_per_epoch,
    check_batch_size,
    epoch_order,
    global_batch,
    local_batch,
    shard,
)


def test_epoch_order_is_a_seeded_permutation() -> None:
    a = epoch_order(50, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(50, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(50, seed=2, epoch=0))


def test_batches_per_epoch() -> None:
    assert batches_per_epoch(10, 4) == 3  # last batch of 2 kept
    assert batches_per_epoch(10, 4, world_size=2) == 3  # 2 divides by 2: kept
    assert batches_per_epoch(9, 4, world_size=2) == 2  # 1 left: dropped under DDP
    assert batches_per_epoch(3, 4, world_size=2) == 0
    with pytest.raises(ValueError, match="batch_size"):
        check_batch_size(5, 2)


def test_shards_cover_each_global_batch_once() -> None:
    order = epoch_order(24, seed=0, epoch=3)
    examples = [f"ex{i}" for i in range(24)]
    seen = []
    for index in range(batches_per_epoch(24, 8, 4)):
        parts = [local_batch(examples, order, index, 8, rank, 4) for rank in range(4)]
        assert all(len(p) == 2 for p in parts)
        flat = [x for p in parts for x in p]
        assert flat == [examples[i] for i in global_batch(order, index, 8)]
        seen += flat
    assert sorted(seen) == sorted(examples)
    with pytest.raises(ValueError, match="evenly"):
        shard(np.arange(5), 0, 2)


def test_random_order_is_the_seeded_shuffle() -> None:
    from jrr_pipeline.ml.training.data import RandomOrder

    order = RandomOrder(10, seed=4)
    assert np.array_equal(order.order(2, 4), epoch_order(10, 4, 2))
    assert order.batches_per_epoch(4, 2) == batches_per_epoch(10, 4, 2) == 3
