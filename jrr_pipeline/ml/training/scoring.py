"""The scores the negative strategies read, computed once before a run, without gradients.

- **SimANS** weighs a negative by how close a *retriever's* score of it lies to the positive's.
  The retriever is the dense one the stage starts from (the base model in the warm-up, the
  warm-up retriever in joint training): s(q, p) = <E(q), E(p)> / temperature, the scale the
  model's own softmax trains at, for the positives and the negatives alike (BM25 scores would
  need the positives' BM25 scores, which the negatives table does not keep, and sit on another
  scale per query).
- **Denoising** and **TAS-Balanced margins** read the warm-up *reranker*'s logits s_ce(q, p); a
  negative's probability of beating the query's best positive is sigmoid(s_ce(p-) - s_ce(p+)),
  the ``relative`` calibration of ``ml.denoise``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever

Pair = tuple[str, str]  # (query id, doc id)


def dense_pair_scores(retriever: DenseRetriever, query_text: dict[str, str],
                      passage_text: dict[str, str], pairs: Sequence[Pair], batch_size: int = 64,
                      autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """float64 [len(pairs)] s(q, p) = <E(q), E(p)> / temperature; every query and passage is
    encoded once (eval mode: no dropout, no RNG drawn)."""
    if not pairs:
        return np.zeros(0)
    qids = sorted({q for q, _ in pairs})
    dids = sorted({d for _, d in pairs})
    q_emb = retriever.embed([query_text[q] for q in qids], "query", batch_size,
                            autocast_dtype=autocast_dtype).astype(np.float64)
    p_emb = retriever.embed([passage_text[d] for d in dids], "passage", batch_size,
                            autocast_dtype=autocast_dtype).astype(np.float64)
    q_row = {q: i for i, q in enumerate(qids)}
    p_row = {d: i for i, d in enumerate(dids)}
    q_sel = q_emb[[q_row[q] for q, _ in pairs]]
    p_sel = p_emb[[p_row[d] for _, d in pairs]]
    return (q_sel * p_sel).sum(axis=1) / retriever.config.temperature


def reranker_pair_scores(reranker: CrossEncoderReranker, query_text: dict[str, str],
                         passage_text: dict[str, str], pairs: Sequence[Pair],
                         batch_size: int = 64, autocast_dtype: torch.dtype | None = None
                         ) -> np.ndarray:
    """float64 [len(pairs)] reranker logits s_ce(q, p) (eval mode)."""
    if not pairs:
        return np.zeros(0)
    texts = [(query_text[q], passage_text[d]) for q, d in pairs]
    return reranker.predict(texts, batch_size=batch_size,
                            autocast_dtype=autocast_dtype).astype(np.float64)


def relative_probabilities(logits: dict[Pair, float], positives: Sequence[Pair]
                           ) -> dict[Pair, float]:
    """sigmoid(s_ce(q, p) - s_ce(q, best positive of q)) of every scored pair whose query has a
    positive among ``positives`` (``ml.denoise.calibrate``, relative)."""
    import polars as pl

    from jrr_pipeline.ml.denoise import calibrate

    if not logits:
        return {}
    positive = set(positives)
    keys = list(logits)
    frame = pl.DataFrame({"query_id": [q for q, _ in keys], "doc_id": [d for _, d in keys],
                          "ce_score": [logits[k] for k in keys],
                          "is_positive": [k in positive for k in keys]})
    calibrated = calibrate(frame, "relative")
    return {(q, d): p for q, d, p in calibrated.select("query_id", "doc_id", "ce_prob").iter_rows()
            if p is not None}


def query_embeddings(retriever: DenseRetriever, texts: Sequence[str], batch_size: int = 64,
                     autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """float32 [N, H] query embeddings (TAS-Balanced clusters them)."""
    return retriever.embed(list(texts), "query", batch_size, autocast_dtype=autocast_dtype)
