"""TAS-Balanced examples: one per (query, positive, anchor negative), binned by teacher margin.

For every (query, positive) pair, each negative of its pool that the sampler may return
(``Sampler.eligible``) is an *anchor*: an example whose first negative it is, with margin
s_ce(q, p+) - s_ce(q, anchor) by the warm-up reranker. The pair's margins fall into ``bins``
equal-width bins (``ml.sampling.tas.margin_bins``); ``TASBalancedOrder`` picks a bin uniformly,
then an anchor in it. With ``n_negatives`` > 1 the anchor's companions are drawn by the sampler
from the rest of its bin (then from the rest of the pool, then random corpus documents), so all
of an example's negatives share a margin bin; TAS-B itself trains on single triples (n = 1).
A pair without candidates has one example of random negatives.

Examples are built when the loop asks for them, each from its own seeded generator, so the
same index always gives the same example and memory holds indices only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jrr_pipeline.ml.sampling import Candidate, build_sampler, negative_picker
from jrr_pipeline.ml.sampling.tas import (
    TASBalancedOrder,
    cluster_queries,
    margin_bins,
    nearest_clusters,
)
from jrr_pipeline.ml.training.examples import NegativePools, RetrievalExample

Pair = tuple[str, str]
EXAMPLE_STREAM = 0x7A6


class TASExamples(Sequence):
    """The anchors of every pair as a lazy, deterministic sequence of ``RetrievalExample``."""

    def __init__(self, data: NegativePools, n_negatives: int, sampler: dict,
                 teacher: dict[Pair, float], bins: int, seed: int) -> None:
        self.data, self.n_negatives, self.seed = data, n_negatives, seed
        self.pick = negative_picker(sampler)
        options = dict(sampler)
        eligible = build_sampler(options.pop("name"), **options).eligible
        self.items: list[tuple[int, int]] = []  # (pair, anchor's position in the pair's pool)
        self.pools: list[list[Candidate]] = []
        self.bin_of: list[np.ndarray] = []
        self.bins_of_pair: list[list[np.ndarray]] = []
        for pair, (qid, positive) in enumerate(data.pairs):
            pool = eligible(data.pools.get(qid, [])) if n_negatives > 0 else []
            margins = np.array([teacher[(qid, positive)] - teacher[(qid, c.doc_id)]
                                for c in pool])
            which = margin_bins(margins, bins)
            first = len(self.items)
            self.items += [(pair, j) for j in range(len(pool))] or [(pair, -1)]
            self.pools.append(pool)
            self.bin_of.append(which)
            self.bins_of_pair.append(
                [first + np.flatnonzero(which == b) for b in np.unique(which)]
                or [np.array([first])])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> RetrievalExample:  # type: ignore[override]
        pair, anchor = self.items[index]
        qid, positive = self.data.pairs[pair]
        rng = np.random.default_rng([self.seed, EXAMPLE_STREAM, index])
        chosen: list[str] = []
        if anchor >= 0:
            pool, which = self.pools[pair], self.bin_of[pair]
            chosen = [pool[anchor].doc_id]
            same_bin = [c for j, c in enumerate(pool) if which[j] == which[anchor] and j != anchor]
            score = self.data.positive_score.get(qid)
            chosen += self.pick(same_bin, self.n_negatives - 1, rng, score)
            rest = [c for c in pool if c.doc_id not in set(chosen)]
            chosen += self.pick(rest, self.n_negatives - len(chosen), rng, score)
        return self.data.example(qid, positive,
                                 self.data.top_up(rng, qid, chosen, self.n_negatives))

    def batch_order(self, query_embeddings: dict[str, np.ndarray], clusters: int,
                    seed: int) -> TASBalancedOrder:
        """The TAS-Balanced order over these examples, the queries clustered by k-means."""
        queries = sorted({qid for qid, _ in self.data.pairs})
        row = {qid: i for i, qid in enumerate(queries)}
        labels, centroids = cluster_queries(np.stack([query_embeddings[q] for q in queries]),
                                            clusters, seed)
        pairs_of_query: list[list[int]] = [[] for _ in queries]
        for pair, (qid, _) in enumerate(self.data.pairs):
            pairs_of_query[row[qid]].append(pair)
        return TASBalancedOrder(
            clusters=[np.flatnonzero(labels == c) for c in range(centroids.shape[0])],
            neighbours=nearest_clusters(centroids),
            pairs_of_query=[np.array(p) for p in pairs_of_query],
            bins_of_pair=self.bins_of_pair, seed=seed)
