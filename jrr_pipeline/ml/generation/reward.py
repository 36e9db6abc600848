"""The reward of a generated query q for its source document d (Ma et al. style
generator-retriever game, our design doc)::

    R(q, d) = a * L_R(q, d) + b * S(q, d) - c * P(q, d)

- ``L_R``: the current retriever's InfoNCE loss of (q, d) against q's hard negatives and the
  other documents of the round's batch, -log softmax_j(<q, p_j> / T)[d] (hard queries score high);
- ``S``: the current reranker's probability that d is q's answer among [d, q's hard negatives],
  softmax of its logits (keeps queries answerable from their document), or the same
  probability under a frozen dense + BM25 fusion (``fusion_relevance.py``, no reranker);
- ``P``: length and copy penalty, (words - max_words)+ / max_words + (longest verbatim run of
  the document - max_copy)+ / max_copy, and 1 for an empty query.

Every score, softmax and log-softmax is computed in fp32 outside autocast, without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jrr_pipeline.ml.generation.spans import longest_copy, lowered_words
from jrr_pipeline.ml.precision import full_precision, score_matrix


@dataclass(frozen=True)
class RewardWeights:
    loss: float = 1.0  # a
    relevance: float = 1.0  # b
    penalty: float = 1.0  # c
    max_query_words: int = 12
    max_copy_words: int = 6


@torch.no_grad()
def retriever_losses(retriever, queries: list[str], positives: list[str],
                     negatives: list[list[str]], positive_keys: list[str]) -> Tensor:
    """[Q] InfoNCE loss of each query for its positive, over every passage of the batch (each
    query's [positive, *negatives] in turn); copies of a query's own positive (another query of
    the same document) are masked."""
    n = len(negatives[0]) if negatives else 0
    if any(len(row) != n for row in negatives):
        raise ValueError("retriever_losses: every query needs the same number of negatives")
    texts = [t for pos, neg in zip(positives, negatives, strict=True) for t in (pos, *neg)]
    keys = [k for key in positive_keys for k in (key, *[None] * n)]
    q = retriever.encode_queries(retriever.tokenize_queries(queries))
    p = retriever.encode_passages(retriever.tokenize_passages(texts))
    target = torch.arange(len(queries), device=q.device) * (1 + n)
    same = torch.tensor([[key is not None and key == own for key in keys]
                         for own in positive_keys], device=q.device)
    same[torch.arange(len(queries)), target] = False
    with full_precision(q.device):
        logits = score_matrix(q, p, 1.0 / retriever.config.temperature)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, target, reduction="none").cpu()


@torch.no_grad()
def relevance(reranker, queries: list[str], positives: list[str],
              negatives: list[list[str]]) -> Tensor:
    """[Q] the reranker's softmax probability of the positive among [positive, *negatives]."""
    width = 1 + len(negatives[0]) if negatives else 1
    pairs_q = [q for q in queries for _ in range(width)]
    pairs_p = [t for pos, neg in zip(positives, negatives, strict=True) for t in (pos, *neg)]
    logits = reranker(reranker.tokenize(pairs_q, pairs_p)).view(len(queries), width)
    with full_precision(logits.device):
        return torch.softmax(logits.float(), dim=1)[:, 0].cpu()


def penalties(queries: list[str], documents: list[str], max_query_words: int,
              max_copy_words: int) -> Tensor:
    """[Q] length and copy penalty (see the module docstring)."""
    out = []
    for query, document in zip(queries, documents, strict=True):
        n = len(lowered_words(query))
        if n == 0:
            out.append(1.0)
            continue
        copy = longest_copy(query, document)
        out.append(max(n - max_query_words, 0) / max_query_words
                   + max(copy - max_copy_words, 0) / max_copy_words)
    return torch.tensor(out, dtype=torch.float32)


def total_reward(loss: Tensor, rel: Tensor, penalty: Tensor, weights: RewardWeights) -> Tensor:
    return weights.loss * loss + weights.relevance * rel - weights.penalty * penalty


def reinforce_loss(log_probs: Tensor, rewards: Tensor, groups: Tensor,
                   baseline: str = "document_mean", moving: float = 0.0) -> Tensor:
    """REINFORCE with a baseline (Williams 1992): -mean((R - b) * log pi). ``document_mean``:
    b = the mean reward of the same document's queries (``groups`` holds each query's document
    index); ``moving_average``: b = ``moving``."""
    rewards = rewards.to(log_probs.device, torch.float32)
    if baseline == "document_mean":
        groups = groups.to(log_probs.device)
        sums = torch.zeros(int(groups.max()) + 1, device=log_probs.device).index_add_(
            0, groups, rewards)
        counts = torch.bincount(groups).float()
        base = (sums / counts.clamp_min(1))[groups]
    elif baseline == "moving_average":
        base = torch.full_like(rewards, moving)
    else:
        raise ValueError(f"reinforce_loss: unknown baseline {baseline!r}")
    return -((rewards - base).detach() * log_probs).mean()
