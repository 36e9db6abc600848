"""Deterministic batching: per-epoch shuffles derived from the seed, global batches, DDP shards.

Nothing here keeps state: the order of epoch `e` is a pure function of (seed, e, n), so a resumed
run only needs (epoch, batch index) to continue exactly where it stopped. A ``BatchOrder`` says
which examples make up the batches of an epoch: ``RandomOrder`` (a seeded shuffle, the default)
or another strategy with the same contract (``ml.sampling.tas.TASBalancedOrder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of range(n_examples) for `epoch`, reproducible from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples)


class BatchOrder(Protocol):
    """Which examples make up each global batch of an epoch, as a pure function of the epoch:
    global batch i of epoch e is ``order(e, batch_size)[i * batch_size:(i + 1) * batch_size]``
    on every rank (each takes its shard), after a resume too."""

    def batches_per_epoch(self, batch_size: int, world_size: int) -> int: ...

    def order(self, epoch: int, batch_size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class RandomOrder:
    """A seeded permutation of the examples per epoch (``epoch_order``)."""

    n_examples: int
    seed: int

    def batches_per_epoch(self, batch_size: int, world_size: int) -> int:
        return batches_per_epoch(self.n_examples, batch_size, world_size)

    def order(self, epoch: int, batch_size: int) -> np.ndarray:
        return epoch_order(self.n_examples, self.seed, epoch)


def check_batch_size(batch_size: int, world_size: int) -> None:
    """Global batches are split evenly across ranks, so batch_size must divide by world_size."""
    if batch_size % world_size != 0:
        raise ValueError(
            f"TrainConfig field 'batch_size': {batch_size} is not divisible by the world size "
            f"{world_size} (each DDP rank takes an equal share of the global batch)"
        )


def batches_per_epoch(n_examples: int, batch_size: int, world_size: int = 1) -> int:
    """Global batches in one epoch.

    Single process: ceil(n / batch_size), the last batch may be short. Under DDP a short last
    batch is kept only when its size divides by world_size (ranks must get equal shards for the
    cross-batch all_gather), else it is dropped.
    """
    full, rest = divmod(n_examples, batch_size)
    if rest and rest % world_size == 0:
        full += 1
    return full


def global_batch(order: np.ndarray, index: int, batch_size: int) -> np.ndarray:
    """Example indices of global batch `index` of an epoch."""
    return order[index * batch_size : (index + 1) * batch_size]


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous equal share of a global batch for `rank` (rank 0 gets the first rows)."""
    if len(indices) % world_size != 0:
        raise ValueError(
            f"cannot shard a batch of {len(indices)} examples over {world_size} ranks evenly"
        )
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


def local_batch(
    examples: Sequence, order: np.ndarray, index: int, batch_size: int, rank: int, world_size: int
) -> list:
    """The examples this rank trains on for global batch `index`."""
    return [examples[int(i)] for i in shard(global_batch(order, index, batch_size), rank, world_size)]
