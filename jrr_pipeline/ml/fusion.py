"""Score fusion for reranking: mix the reranker's and the first stage's scores per query.

A cross-encoder trained on a small labelled set (SciFact train: 809 queries) is a weaker ranker than
the retriever on its own but errs differently, so interpolating the two is a standard remedy
(e.g. Nogueira & Cho 2019 discuss first-stage interpolation; Lin et al., "Pretrained Transformers for
Text Ranking", sec. 3.2.3). Both score lists of a query are z-normalised first, because a
listwise-trained reranker's logits have an arbitrary offset and scale per query::

    s = w * z(s_ce) + (1 - w) * z(s_first)

w = 1 is the reranker alone, w = 0 the first stage alone.

A reranked run is the reranked top-k followed by the first stage's remaining documents in
first-stage order, so its Recall@100 equals the first stage's and its MAP is comparable.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jrr_pipeline.ml.ranking import Run, order, rank_scores


def zscore(scores: np.ndarray) -> np.ndarray:
    """(scores - mean) / std; all zeros when the scores are (nearly) constant."""
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


def rerank_scores(reranker, first_stage: Run, query_text: Mapping[str, str],
                  passage_text: Mapping[str, str], depth: int, batch_size: int = 64,
                  progress: bool = False, autocast_dtype=None) -> dict[str, dict[str, float]]:
    """The reranker's score (a ``CrossEncoderReranker``) of each query's first-stage top-``depth``,
    {qid: {doc_id: score}} in first-stage order (score, then doc id)."""
    if depth < 1:
        raise ValueError(f"rerank_scores: depth must be >= 1, got {depth}")
    keys = [(qid, did) for qid, docs in first_stage.items() for did in order(docs)[:depth]]
    scores = reranker.predict([(query_text[q], passage_text[d]) for q, d in keys],
                              batch_size=batch_size, progress=progress,
                              autocast_dtype=autocast_dtype)
    out: dict[str, dict[str, float]] = {}
    for (qid, did), score in zip(keys, scores, strict=True):
        out.setdefault(qid, {})[did] = float(score)
    return out


def reranked(first_stage: Run, reranker_scores: Run, depth: int, weight: float,
             ) -> dict[str, dict[str, float]]:
    """Each query's first-stage top-``depth`` reordered by ``fuse`` (``weight`` 1 = the reranker
    alone; ties by first-stage order), followed by the rest of the first stage in its own order,
    so a reranked run holds the same documents as its first stage (same R@100).

    The first stage is ordered by score, then doc id; the result's scores are rank scores
    (``jrr_pipeline.ml.ranking.rank_scores``), strictly decreasing down the list.
    """
    if depth < 1:
        raise ValueError(f"reranked: depth must be >= 1, got {depth}")
    out: dict[str, dict[str, float]] = {}
    for qid, docs in first_stage.items():
        ranked = order(docs)
        head, tail = ranked[:depth], ranked[depth:]
        if head:
            scored = reranker_scores.get(qid, {})
            missing = [d for d in head if d not in scored]
            if missing:
                raise ValueError(f"reranked: query {qid!r}: no reranker score for {missing[:3]} "
                                 f"of its first-stage top-{depth}")
            mixed = fuse(np.array([scored[d] for d in head]), np.array([docs[d] for d in head]),
                         weight)
            head = order(dict(zip(head, mixed.tolist(), strict=True)), prior=head)
        out[qid] = rank_scores(head + tail)
    return out


def rerank_run(reranker, first_stage: Run, query_text: Mapping[str, str],
               passage_text: Mapping[str, str], depth: int, weight: float, batch_size: int = 64,
               progress: bool = False, autocast_dtype=None,
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Rescore each query's top-``depth`` of ``first_stage`` with ``reranker`` (a
    ``CrossEncoderReranker``); returns (fused run, reranker-only run), each as ``reranked`` builds
    it: the reordered top-``depth`` followed by the first stage's tail, scores as ranks."""
    scores = rerank_scores(reranker, first_stage, query_text, passage_text, depth,
                           batch_size=batch_size, progress=progress, autocast_dtype=autocast_dtype)
    return (reranked(first_stage, scores, depth, weight),
            reranked(first_stage, scores, depth, 1.0))
