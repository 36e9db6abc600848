"""Score fusion for reranking: mix the reranker's and the first stage's scores per query.

A cross-encoder trained on a small labelled set (SciFact train: 809 queries) is a weaker ranker than
the retriever on its own but errs differently, so interpolating the two is a standard remedy
(e.g. Nogueira & Cho 2019 discuss first-stage interpolation; Lin et al., "Pretrained Transformers for
Text Ranking", sec. 3.2.3). Both score lists of a query are z-normalised first, because a
listwise-trained reranker's logits have an arbitrary offset and scale per query::

    s = w * z(s_ce) + (1 - w) * z(s_first)

w = 1 is the reranker alone, w = 0 the first stage alone.
"""

from __future__ import annotations

import numpy as np


def zscore(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    std = scores.std()
    return (scores - scores.mean()) / (std if std > 1e-12 else 1.0)


def fuse(reranker_scores: np.ndarray, first_stage_scores: np.ndarray, weight: float) -> np.ndarray:
    """Fused scores of one query's candidates (same order in both arrays)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    if len(reranker_scores) != len(first_stage_scores):
        raise ValueError(f"fuse: {len(reranker_scores)} reranker scores but "
                         f"{len(first_stage_scores)} first-stage scores")
    if weight == 1.0:
        return np.asarray(reranker_scores, dtype=np.float64)
    return weight * zscore(reranker_scores) + (1.0 - weight) * zscore(first_stage_scores)


def rerank_run(reranker, first_stage: dict[str, dict[str, float]], query_text: dict[str, str],
               passage_text: dict[str, str], depth: int, weight: float, batch_size: int = 64,
               progress: bool = False, autocast_dtype=None,
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Rescore each query's top-``depth`` of ``first_stage`` with ``reranker`` (a
    ``CrossEncoderReranker``); returns (fused run, reranker-only run) as {qid: {doc_id: score}}."""
    pairs, keys, first = [], [], []
    for qid, docs in first_stage.items():
        for did, score in sorted(docs.items(), key=lambda kv: -kv[1])[:depth]:
            pairs.append((query_text[qid], passage_text[did]))
            keys.append((qid, did))
            first.append(score)
    scores = reranker.predict(pairs, batch_size=batch_size, progress=progress,
                              autocast_dtype=autocast_dtype)
    alone: dict[str, dict[str, float]] = {}
    first_of: dict[str, list[float]] = {}
    for (qid, did), score, base in zip(keys, scores, first, strict=True):
        alone.setdefault(qid, {})[did] = float(score)
        first_of.setdefault(qid, []).append(base)
    fused = {}
    for qid, docs in alone.items():
        mixed = fuse(np.array(list(docs.values())), np.array(first_of[qid]), weight)
        fused[qid] = {did: float(v) for did, v in zip(docs, mixed, strict=True)}
    return fused, alone
