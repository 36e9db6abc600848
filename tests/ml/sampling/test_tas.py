"""TAS-Balanced: k-means clusters (FAISS), margin bins, and the batch order drawn from them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from jrr_pipeline.ml.sampling.tas import (
    TASBalancedOrder,
    cluster_queries,
    margin_bins,
    nearest_clusters,
)


def blobs(sizes=(10, 10, 10), dim=8, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated unit-norm groups of points and the group of each point."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 10
    x = np.concatenate([c + rng.normal(scale=0.1, size=(n, dim)) for c, n in zip(centres, sizes,
                                                                                 strict=True)])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        np.repeat(np.arange(len(sizes)), sizes)


def test_kmeans_finds_the_topics_and_is_seeded():
    x, truth = blobs()
    labels, centroids = cluster_queries(x, 3, seed=5)
    assert centroids.shape == (3, 8)
    for group in range(3):  # each true group is exactly one cluster
        assert len(set(labels[truth == group])) == 1
    assert len(set(labels)) == 3
    again, _ = cluster_queries(x, 3, seed=5)
    assert np.array_equal(labels, again)


def test_kmeans_caps_k_and_drops_empty_clusters():
    x, _ = blobs((3, 2))
    labels, centroids = cluster_queries(x, 50, seed=0)  # k > N: at most N clusters
    assert centroids.shape[0] == len(set(labels)) <= 5
    assert sorted(set(labels)) == list(range(centroids.shape[0]))  # no empty cluster index
    single, centre = cluster_queries(x, 1, seed=0)
    assert set(single) == {0} and centre.shape == (1, 8)


def test_margin_bins_are_equal_width_over_the_range():
    assert margin_bins(np.arange(10.0), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert margin_bins(np.array([-1.0, 0.0, 3.0]), 4).tolist() == [0, 1, 3]
    assert margin_bins(np.array([2.0, 2.0]), 3).tolist() == [0, 0]
    assert margin_bins(np.array([]), 3).tolist() == []


def test_nearest_clusters_nearest_first():
    centroids = np.array([[0.0, 0], [1, 0], [5, 0], [1.5, 0]])
    assert [n.tolist() for n in nearest_clusters(centroids)] == [
        [1, 3, 2], [3, 0, 2], [3, 1, 0], [1, 0, 2]]


def one_item_per_query(clusters: list[list[int]], seed: int = 3) -> TASBalancedOrder:
    """Query q has one pair (q) with one bin holding item q."""
    n = sum(len(c) for c in clusters)
    centroids = np.array([[float(i), 0.0] for i in range(len(clusters))])
    return TASBalancedOrder(clusters=[np.array(c) for c in clusters],
                            neighbours=nearest_clusters(centroids),
                            pairs_of_query=[np.array([q]) for q in range(n)],
                            bins_of_pair=[[np.array([q])] for q in range(n)], seed=seed)


def test_every_batch_comes_from_one_cluster_of_distinct_queries():
    clusters = [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]
    order = one_item_per_query(clusters)
    assert order.batches_per_epoch(4, 1) == 5  # ceil(18 pairs / 4)
    items = order.order(epoch=0, batch_size=4)
    assert items.shape == (20,)
    for batch in items.reshape(5, 4):
        assert len(set(batch.tolist())) == 4
        assert sum(set(batch.tolist()) <= set(c) for c in clusters) == 1
    assert np.array_equal(items, order.order(0, 4))  # a pure function of (seed, epoch)
    assert not np.array_equal(items, order.order(1, 4))
    assert not np.array_equal(items, one_item_per_query(clusters, seed=4).order(0, 4))


def test_a_small_cluster_is_topped_up_from_its_nearest():
    order = one_item_per_query([[0, 1], [2, 3], [4, 5, 6, 7, 8, 9]])  # centroids at x = 0, 1, 2
    for batch in order.order(0, 4).reshape(-1, 4):
        members = set(batch.tolist())
        if members & {0, 1}:  # started in cluster 0 or 1: the two of them (nearest each other)
            assert members == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="cannot fill a batch of 20"):
        order.order(0, 20)


def test_bins_are_drawn_uniformly_not_by_their_size():
    """One query, one pair: an easy bin of 90 items and a hard bin of 10. Uniform over items
    would pick the hard bin 10 % of the time; balanced over bins, half of the time."""
    order = TASBalancedOrder(clusters=[np.array([0])], neighbours=[np.array([], dtype=int)],
                             pairs_of_query=[np.array([0])],
                             bins_of_pair=[[np.arange(90), np.arange(90, 100)]], seed=0)
    drawn = np.concatenate([order.order(e, 1) for e in range(400)])
    hard = (drawn >= 90).mean()
    assert 0.4 < hard < 0.6, hard
    assert len(Counter(drawn[drawn >= 90].tolist())) == 10  # every hard item gets its turn
