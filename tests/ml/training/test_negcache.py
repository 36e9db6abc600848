"""The negative cache on the tiny BERT: fully fresh it gives the full-negatives loss (with the
gradient of constant cached embeddings), a cached positive is masked, refreshes go round robin."""

from __future__ import annotations

import pytest
import torch

from jrr_pipeline.ml.losses import InfoNCELoss
from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig
from jrr_pipeline.ml.training.negcache import NegativeCache
from jrr_pipeline.ml.training.warmup import RetrievalExample, RetrieverWarmupTask, positives_mask

WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter"]
CACHED = ["table yellow", "engine silver", "market cotton", "island pepper", "violin rocket",
          "candle mirror", "apple apple apple"]  # the last one is q0's positive, d0


def batch() -> list[RetrievalExample]:
    return [RetrievalExample(query=w, positive=f"{w} {w} {w}", negatives=[f"{w} noise"],
                             query_id=f"q{i}", positive_id=f"d{i}", negative_ids=[f"n{i}"],
                             positive_ids=frozenset({f"d{i}"}))
            for i, w in enumerate(WORDS[:4])]


def model(tiny_model_dir) -> DenseRetriever:
    torch.manual_seed(0)
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=16))
    return retriever.eval()  # no dropout: the cached and the fresh encodings are the same


def cache_ids() -> list[str]:
    return [f"c{i}" for i in range(len(CACHED) - 1)] + ["d0"]


def full_negatives_loss(retriever: DenseRetriever, examples, detach: bool) -> torch.Tensor:
    """InfoNCE over the batch plus every cached passage encoded now, in the batch's graph."""
    q = retriever.encode_queries(retriever.tokenize_queries([e.query for e in examples]))
    p = retriever.encode_passages(retriever.tokenize_passages(
        [t for e in examples for t in (e.positive, *e.negatives)]))
    extra = retriever.encode_passages(retriever.tokenize_passages(CACHED))
    keys = [k for e in examples for k in e.passage_keys()] + cache_ids()
    mask = positives_mask(examples, keys)
    return InfoNCELoss()(q, p, 1 / retriever.config.temperature, mask=mask,
                         extra=extra.detach() if detach else extra)


def grads(retriever: DenseRetriever, loss: torch.Tensor) -> list[torch.Tensor]:
    retriever.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in retriever.parameters() if p.grad is not None]


def test_fully_fresh_cache_gives_the_full_negatives_loss(tiny_model_dir):
    retriever = model(tiny_model_dir)
    cache = NegativeCache(cache_ids(), CACHED, retriever.embedding_dim, refresh=1.0)
    task = RetrieverWarmupTask(retriever, cache=cache)
    examples = batch()
    cached, metrics = task.loss(examples)
    cached_grads = grads(retriever, cached)
    cached = cached.detach()
    # refresh = 1 re-encodes the whole cache each step: the second step is fresh as well
    with torch.no_grad():
        cached_again, _ = task.loss(examples)
    full = full_negatives_loss(retriever, examples, detach=False).detach()
    assert float(cached) == pytest.approx(float(full), abs=1e-6)
    assert float(cached_again) == pytest.approx(float(full), abs=1e-6)
    assert metrics["negatives_per_query"] == 4 * 2 - 1 + len(CACHED) - 0.25  # q0's d0 masked
    # the gradient flows through the fresh (batch) embeddings only: it is the full loss's
    # gradient with the cached embeddings held constant, not the full loss's own
    detached_grads = grads(retriever, full_negatives_loss(retriever, examples, detach=True))
    full_grads = grads(retriever, full_negatives_loss(retriever, examples, detach=False))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cached_grads, detached_grads,
                                                               strict=True))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(cached_grads, full_grads,
                                                                   strict=True))


def test_a_cached_positive_is_masked(tiny_model_dir):
    retriever = model(tiny_model_dir)
    examples = batch()
    with_positive = RetrieverWarmupTask(
        retriever, cache=NegativeCache(cache_ids(), CACHED, retriever.embedding_dim, 1.0))
    without = RetrieverWarmupTask(
        retriever, cache=NegativeCache(cache_ids()[:-1], CACHED[:-1], retriever.embedding_dim, 1.0))
    mask = with_positive.cache.positives_mask([e.positive_keys() for e in examples])
    assert mask[:, -1].tolist() == [True, False, False, False]  # d0: q0's positive only
    with torch.no_grad():  # for q0 the cached d0 is as good as absent; for q1 a negative
        q0, q1 = examples[:1], examples[1:2]
        assert float(with_positive.loss(q0)[0]) == pytest.approx(float(without.loss(q0)[0]),
                                                                 abs=1e-6)
        assert float(with_positive.loss(q1)[0]) > float(without.loss(q1)[0]) + 1e-4


def test_stale_entries_stay_until_their_turn():
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(list(texts))
        return torch.full((len(texts), 2), float(len(calls)))

    texts = [f"t{i}" for i in range(10)]
    cache = NegativeCache([f"c{i}" for i in range(10)], texts, dim=2, refresh=0.3, chunk=4)
    assert cache.refresh(encode) == 10 and [len(c) for c in calls] == [4, 4, 2]  # first fill
    assert cache.refresh(encode) == 3 and calls[-1] == ["t0", "t1", "t2"]
    assert cache.refresh(encode) == 3 and calls[-1] == ["t3", "t4", "t5"]
    cache.refresh(encode)
    assert cache.refresh(encode) == 3 and calls[-1] == ["t9", "t0", "t1"]  # round robin
    assert cache.embeddings[:, 0].tolist() == [7, 7, 4, 5, 5, 5, 6, 6, 6, 7]  # call numbers
    with pytest.raises(ValueError, match="refresh"):
        NegativeCache(["a"], ["a"], 2, refresh=0.0)
