"""``jrr search``: answer a query from the latest index and models of a dataset.

Uses the newest retriever stage that has both a checkpoint and an index (``faiss_index`` of the
joint retriever once it exists, else the warm-up retriever's ``warmup_index``) and, with
``rerank``, the matching reranker over the retrieved top-k. Models load once; each query then
costs one query encoding, one FAISS search and (optionally) k cross-encoder pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# (retriever checkpoint, index, reranker checkpoint), newest stage first
STAGES = (
    ("joint_retriever", "faiss_index", "joint_reranker"),
    ("warmup_retriever", "warmup_index", "warmup_reranker"),
)


@dataclass
class Hit:
    doc_id: str
    score: float
    title: str
    text: str


class Searcher:
    def __init__(self, artifacts_dir: Path, warehouse, rerank: bool = False,
                 rerank_depth: int = 20, fusion_weight: float = 0.5) -> None:
        from jrr_pipeline.ml.index import load_index
        from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever

        ready = [s for s in STAGES if (artifacts_dir / s[0]).is_dir() and (artifacts_dir / s[1]).is_dir()]
        if not ready:
            raise FileNotFoundError(f"{artifacts_dir}: no retriever with an index yet; run `jrr run` first")
        retriever_dir, index_dir, reranker_dir = ready[0]
        self.stage = retriever_dir.split("/")[0]
        self.retriever = DenseRetriever.from_pretrained(str(artifacts_dir / retriever_dir)).eval()
        self.index, self.doc_ids = load_index(artifacts_dir / index_dir)
        self.reranker = None
        if rerank:
            if not (artifacts_dir / reranker_dir).is_dir():
                raise FileNotFoundError(f"{artifacts_dir / reranker_dir}: no reranker to rerank with")
            self.reranker = CrossEncoderReranker.from_pretrained(str(artifacts_dir / reranker_dir)).eval()
        self.rerank_depth = rerank_depth
        self.fusion_weight = fusion_weight  # as evaluation_report's rerank_fusion_weight
        corpus = warehouse.query("SELECT doc_id, title, text FROM corpus")
        self.docs = {d: (t or "", x or "") for d, t, x in corpus.iter_rows()}

    def search(self, query: str, k: int = 10) -> tuple[list[Hit], dict[str, float]]:
        """Top-``k`` hits and the time of each part in milliseconds."""
        import numpy as np

        from jrr_pipeline.ml.fusion import fuse
        from jrr_pipeline.ml.index import search
        from jrr_pipeline.ml.text import passage_text

        timings = {}
        started = time.perf_counter()
        q = self.retriever.embed([query], kind="query", batch_size=1)
        timings["encode_ms"] = (time.perf_counter() - started) * 1000
        depth = max(k, self.rerank_depth) if self.reranker is not None else k
        started = time.perf_counter()
        ids, scores = search(self.index, self.doc_ids, q, depth)
        timings["search_ms"] = (time.perf_counter() - started) * 1000
        ranked = list(zip(ids[0], scores[0].tolist(), strict=True))
        if self.reranker is not None:
            started = time.perf_counter()
            pairs = [(query, passage_text(*self.docs[d])) for d, _ in ranked]
            rescored = self.reranker.predict(pairs, batch_size=len(pairs) or 1)
            mixed = fuse(rescored, np.array([s for _, s in ranked]), self.fusion_weight)
            ranked = sorted(zip((d for d, _ in ranked), mixed.tolist(), strict=True),
                            key=lambda x: -x[1])
            timings["rerank_ms"] = (time.perf_counter() - started) * 1000
        timings["total_ms"] = sum(timings.values())
        hits = [Hit(d, float(s), *self.docs.get(d, ("", ""))) for d, s in ranked[:k]]
        return hits, timings
