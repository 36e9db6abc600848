"""The warm-up retriever's hard-negative strategies, from settings to training inputs.

``plan_retriever_warmup`` turns ``WarmupRetrieverSettings`` into the loop's inputs:

- ``sampler`` (uniform | simans | denoised): how each example's negatives are drawn from the
  query's BM25 rank window (``ml.sampling``; uniform = the draw the warm-up always made). SimANS
  and denoised draw from the first ``score_depth`` negatives of the window, scored first
  (``ml.training.scoring``): SimANS by the base model's dense scores, denoised by the warm-up
  reranker's probability of beating the query's best positive.
- ``batching`` (random | tas_balanced): the batch order. TAS-Balanced clusters the train
  queries by the base model's embeddings and balances negatives over the warm-up reranker's
  margins (``ml.training.tas_examples``, ``ml.sampling.tas``).
- ``negatives`` (lists | cache): ``cache`` adds a negative cache of ``cache_size`` corpus
  passages to the task (``ml.training.negcache``).

With the defaults (uniform, random, lists) nothing is scored and the examples, order and
training are exactly those of the plain warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.sampling import sample_without_replacement
from jrr_pipeline.ml.training.data import BatchOrder
from jrr_pipeline.ml.training.examples import (
    NegativePools,
    RetrievalExample,
    draw_examples,
    negative_pools,
)
from jrr_pipeline.ml.training.negcache import NegativeCache
from jrr_pipeline.ml.training.scoring import (
    dense_pair_scores,
    query_embeddings,
    relative_probabilities,
    reranker_pair_scores,
)

CACHE_STREAM = 0xCAC4E


@dataclass
class WarmupPlan:
    """What the loop trains on: the examples, their batch order (None = a random shuffle) and
    the negative cache (None = none); ``info`` says what preparing them cost."""

    examples: Sequence[RetrievalExample]
    batching: BatchOrder | None = None
    cache: NegativeCache | None = None
    info: dict[str, Any] = field(default_factory=dict)


def plan_retriever_warmup(settings, tables: dict[str, pl.DataFrame], retriever: DenseRetriever,
                          reranker_dir: str | None = None) -> WarmupPlan:
    """The examples, batch order and cache that ``settings`` (``WarmupRetrieverSettings``) ask
    for; ``reranker_dir`` is the warm-up reranker (needed when ``settings.needs_reranker()``)."""
    started = time.perf_counter()
    window = (settings.rank_window_start, settings.rank_window_end)
    data = negative_pools(tables["queries"], tables["corpus"], tables["qrels"],
                          tables["negatives"], "train", "bm25", window)
    scored = settings.sampler != "uniform" or settings.batching == "tas_balanced"
    teacher: dict[tuple[str, str], float] = {}
    if scored or settings.negatives == "cache":
        from jrr_pipeline.ml.training.distributed import training_device

        retriever.to(training_device())  # where the loop will train it anyway
    if scored:
        data = _first(data, settings.score_depth)
        data, teacher = score_pools(data, settings, retriever, reranker_dir)
    plan = WarmupPlan([])
    if settings.batching == "tas_balanced":
        from jrr_pipeline.ml.training.tas_examples import TASExamples

        examples = TASExamples(data, settings.n_negatives, settings.sampler_spec(), teacher,
                               settings.tas_bins, settings.seed)
        queries = sorted({qid for qid, _ in data.pairs})
        embeddings = query_embeddings(retriever, [data.query_text[q] for q in queries])
        plan.batching = examples.batch_order(dict(zip(queries, embeddings, strict=True)),
                                             settings.tas_clusters, settings.seed)
        plan.examples = examples
    else:
        plan.examples = draw_examples(data, settings.n_negatives, settings.seed,
                                      settings.sampler_spec())
    if settings.negatives == "cache":
        plan.cache = build_cache(data, settings.cache_size, settings.cache_refresh,
                                 retriever.embedding_dim, settings.seed)
    plan.info = {"scored_pairs": len(teacher) or None, "prepare_s": time.perf_counter() - started,
                 "examples": len(plan.examples)}
    return plan


def build_cache(data: NegativePools, size: int, refresh: float, dim: int,
                seed: int) -> NegativeCache:
    """A cache of ``size`` corpus passages drawn uniformly (seeded; all of a smaller corpus)."""
    rng = np.random.default_rng([seed, CACHE_STREAM])
    rows = sorted(sample_without_replacement(range(len(data.doc_ids)), size, rng))
    return NegativeCache([data.doc_ids[i] for i in rows], [data.texts[i] for i in rows], dim,
                         refresh)


def _first(data: NegativePools, depth: int) -> NegativePools:
    """Each query's pool cut to its ``depth`` best-ranked candidates (the ones scored)."""
    return replace(data, pools={q: pool[:depth] for q, pool in data.pools.items()})


def score_pools(data: NegativePools, settings, retriever: DenseRetriever,
                reranker_dir: str | None) -> tuple[NegativePools, dict[tuple[str, str], float]]:
    """``data`` with the scores its strategies read: dense ``score`` and ``positive_score``
    (SimANS), the reranker's ``ce_prob`` (denoised); and the reranker's logits of every scored
    (query, doc) pair (TAS margins), {} when no reranker is needed."""
    from jrr_pipeline.ml.precision import autocast_dtype, use_bf16

    device = retriever.device
    dtype = autocast_dtype(use_bf16(settings.bf16, device))
    passage = dict(zip(data.doc_ids, data.texts, strict=True))
    positives = sorted(set(data.pairs))
    negatives = [(q, c.doc_id) for q in sorted(data.pools) for c in data.pools[q]]
    pairs = positives + negatives
    dense: dict[tuple[str, str], float] = {}
    if settings.sampler == "simans":
        scores = dense_pair_scores(retriever, data.query_text, passage, pairs,
                                   autocast_dtype=dtype)
        dense = dict(zip(pairs, scores.tolist(), strict=True))
    teacher: dict[tuple[str, str], float] = {}
    if settings.needs_reranker():
        if not reranker_dir:
            raise ValueError(f"warmup_retriever: sampler = {settings.sampler!r} / batching = "
                             f"{settings.batching!r} needs the warm-up reranker (run file "
                             f"field 'models.reranker')")
        reranker = CrossEncoderReranker.from_pretrained(reranker_dir).to(device)
        scores = reranker_pair_scores(reranker, data.query_text, passage, pairs,
                                      autocast_dtype=dtype)
        teacher = dict(zip(pairs, scores.tolist(), strict=True))
        del reranker
    prob = relative_probabilities(teacher, positives) if teacher else {}
    best_positive: dict[str, float] = {}  # SimANS's s(q, p+): the query's best positive
    for qid, doc in positives if dense else []:
        best_positive[qid] = max(best_positive.get(qid, -np.inf), dense[(qid, doc)])
    pools = {q: [replace(c, score=dense.get((q, c.doc_id), c.score),
                         ce_prob=prob.get((q, c.doc_id), c.ce_prob)) for c in pool]
             for q, pool in data.pools.items()}
    return replace(data, pools=pools, positive_score=best_positive or data.positive_score), teacher
