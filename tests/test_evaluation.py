"""The evaluation_report asset's steps on real parts: a saved retriever and IVF index read through
the artifact store, hand-built runs scored on test and dev, the dev-selection block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from jrr_pipeline.assets.evaluation import dense_run
from jrr_pipeline.ml.evaluation import evaluate
from jrr_pipeline.ml.index import build_index, encode_corpus, save_index
from jrr_pipeline.resources import ArtifactStore, Compute


def test_dense_run_over_an_ivf_index_with_unfilled_hits(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    """IVF8,Flat with nprobe 1 leaves some queries fewer than `depth` hits (FAISS pads with -1):
    dense_run still gives a run whose scores belong to its documents."""
    import torch

    from jrr_pipeline.ml.modeling import DenseRetriever

    torch.manual_seed(0)
    artifacts = ArtifactStore(root=str(tmp_path))
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir)).eval()
    retriever.save_pretrained(artifacts.path("toy", "warmup_retriever"))
    words = ["cell", "gene", "virus", "heart", "bone", "sleep", "diet", "lung", "skin", "brain"]
    rng = np.random.default_rng(0)
    corpus = pl.DataFrame({"doc_id": [f"d{i}" for i in range(320)], "title": [""] * 320,
                           "text": [" ".join(rng.choice(words, 4)) for _ in range(320)]})
    emb = encode_corpus(retriever, corpus, batch_size=64, progress=False)
    save_index(build_index(emb, "IVF8,Flat", nprobe=1), corpus["doc_id"].to_list(),
               artifacts.path("toy", "warmup_index"))

    query_ids = [f"q{i}" for i in range(12)]
    texts = corpus["text"].to_list()[:12]  # query i is doc i's text: doc i is its top hit
    run = dense_run(artifacts, "toy", "warmup_retriever", "warmup_index", texts, query_ids,
                    depth=100, compute=Compute(device="cpu", dtype="fp32"))
    assert set(run) == set(query_ids)
    assert any(len(docs) < 100 for docs in run.values())
    q_emb = retriever.embed(texts, kind="query")
    for i, qid in enumerate(query_ids):
        docs = list(run[qid])
        rows = [int(d[1:]) for d in docs]
        np.testing.assert_allclose(list(run[qid].values()), emb[rows] @ q_emb[i], rtol=1e-4,
                                   atol=1e-5)
    qrels = pl.DataFrame({"query_id": query_ids, "doc_id": [f"d{i}" for i in range(12)],
                          "relevance": [1] * 12, "split": ["test"] * 12})
    assert evaluate(run, qrels, ["R@100"])["R@100"] == pytest.approx(1.0)
