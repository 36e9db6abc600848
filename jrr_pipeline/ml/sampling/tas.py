"""TAS-Balanced batches: topic-aware query clusters, negatives balanced over teacher margins.

Hofstätter et al., "Efficiently Teaching an Effective Dense Retriever with Balanced Topic Aware
Sampling", SIGIR 2021. The queries are clustered once (k-means on their embeddings); every batch
is drawn from one cluster, chosen uniformly, so in-batch negatives share a topic. Each query's
(positive, negative) pairs are binned by the teacher's margin s(q, p+) - s(q, p-) into ``h``
equal-width bins; a query's pair is drawn from a uniformly chosen non-empty bin, so the many easy
pairs (large margins) do not crowd out the few hard ones.

Here an *item* is one training example (a query, a positive and its negatives, built by the
caller); ``TASBalancedOrder`` only deals in indices: per query its pairs, per pair its bins, per
bin its items. Its order of epoch e is a pure function of (seed, e), like a random shuffle, so a
resumed or DDP run needs only (epoch, batch index). A cluster with fewer queries than a batch
is topped up from the clusters nearest to it (by centroid distance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jrr_pipeline.ml.sampling.base import sample_without_replacement

ORDER_STREAM = 0x7A5  # keeps TAS orders apart from the random shuffles of the same seed


def cluster_queries(embeddings: np.ndarray, k: int, seed: int, niter: int = 20
                    ) -> tuple[np.ndarray, np.ndarray]:
    """k-means (FAISS, Euclidean, seeded) of [N, H] query embeddings ->
    (cluster of each query [N], centroids [k', H]); k' = min(k, N) and empty clusters are
    dropped, so every returned cluster holds at least one query."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = max(1, min(k, x.shape[0]))
    if k == 1:
        return np.zeros(x.shape[0], dtype=np.int64), x.mean(axis=0, keepdims=True)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=10**9)
    kmeans.train(x)
    _, labels = kmeans.index.search(x, 1)
    labels = labels[:, 0].astype(np.int64)
    used = np.unique(labels)
    remap = np.full(k, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return remap[labels], np.asarray(kmeans.centroids)[used]


def margin_bins(margins: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin (0 .. bins - 1) of each margin over [min, max]; all 0 when they are equal."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0:
        return np.zeros(0, dtype=np.int64)
    low, high = m.min(), m.max()
    if high <= low:
        return np.zeros(m.size, dtype=np.int64)
    return np.minimum(((m - low) / (high - low) * bins).astype(np.int64), bins - 1)


@dataclass(frozen=True)
class TASBalancedOrder:
    """The batch order (``ml.training.data.BatchOrder``) of TAS-Balanced.

    ``clusters``: query indices of each cluster; ``neighbours``: for each cluster, the others,
    nearest first; ``pairs_of_query``: pair indices of each query; ``bins_of_pair``: for each
    pair, the item indices of each of its non-empty margin bins. An epoch has as many batches as
    the pairs fill (ceil(pairs / batch_size)), every batch ``batch_size`` distinct queries.
    """

    clusters: Sequence[np.ndarray]
    neighbours: Sequence[np.ndarray]
    pairs_of_query: Sequence[np.ndarray]
    bins_of_pair: Sequence[Sequence[np.ndarray]]
    seed: int

    @property
    def n_pairs(self) -> int:
        return len(self.bins_of_pair)

    def batches_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        if len(self.pairs_of_query) < batch_size:
            raise ValueError(f"tas_balanced: {len(self.pairs_of_query)} training queries cannot "
                             f"fill a batch of {batch_size} distinct queries; lower batch_size")
        return math.ceil(self.n_pairs / batch_size)

    def order(self, epoch: int, batch_size: int) -> np.ndarray:
        """Item indices of every batch of ``epoch``, batch after batch."""
        rng = np.random.default_rng([self.seed, epoch, ORDER_STREAM])
        return np.asarray([item for _ in range(self.batches_per_epoch(batch_size))
                           for item in self.batch(rng, batch_size)], dtype=np.int64)

    def batch(self, rng: np.random.Generator, batch_size: int) -> list[int]:
        """One cluster, uniformly; ``batch_size`` of its queries (then its neighbours'); per
        query a pair, then a bin, then an item of the bin, each uniformly."""
        start = int(rng.integers(len(self.clusters)))
        queries: list[int] = []
        for cluster in (start, *self.neighbours[start]):
            queries += sample_without_replacement(self.clusters[cluster],
                                                  batch_size - len(queries), rng)
            if len(queries) == batch_size:
                break
        items = []
        for query in queries:
            pairs = self.pairs_of_query[query]
            bins = self.bins_of_pair[int(pairs[rng.integers(len(pairs))])]
            members = bins[int(rng.integers(len(bins)))]
            items.append(int(members[rng.integers(len(members))]))
        return items


def nearest_clusters(centroids: np.ndarray) -> list[np.ndarray]:
    """For each centroid, the other centroids by Euclidean distance, nearest first (ties by
    index)."""
    c = np.asarray(centroids, dtype=np.float64)
    dist = ((c[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    out = []
    for i in range(c.shape[0]):
        others = np.array([j for j in range(c.shape[0]) if j != i], dtype=np.int64)
        out.append(others[np.lexsort((others, dist[i, others]))] if others.size else others)
    return out
