"""The evaluation_report asset's steps on real parts: a saved retriever and IVF index read through
the artifact store, hand-built runs scored on test and dev, the dev-selection block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from jrr_pipeline.assets.evaluation import (
    _metric_rows,
    dense_run,
    mlflow_metric_name,
    score_runs,
    split_measures,
)
from jrr_pipeline.ml.evaluation import evaluate
from jrr_pipeline.ml.fusion import reranked
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


# two test queries (t1, t2) and one dev query (v1); the first stage ranks 6 documents each
QRELS = pl.DataFrame({
    "query_id": ["t1", "t1", "t2", "v1", "x1"],
    "doc_id": ["d2", "d6", "d1", "d3", "d1"],
    "relevance": [1, 1, 1, 1, 1],
    "split": ["test", "test", "test", "dev", "train"],
})
FIRST = {q: {f"d{i}": 10.0 - i for i in range(1, 7)} for q in ("t1", "t2", "v1", "x1")}
# the reranker's scores of each first-stage top-3 (d1, d2, d3): it prefers d3, then d2
CE = {q: {"d1": 0.0, "d2": 1.0, "d3": 2.0} for q in FIRST}


def test_reranked_rows_keep_the_first_stage_recall_on_test_and_dev() -> None:
    runs = {"bm25": FIRST, "bm25+reranker": reranked(FIRST, CE, 3, 0.5),
            "bm25+reranker_ce_only": reranked(FIRST, CE, 3, 1.0)}
    test = split_measures(runs, QRELS, "test")
    dev = split_measures(runs, QRELS, "dev")
    for measures in (test, dev):
        for name in ("bm25+reranker", "bm25+reranker_ce_only"):
            assert measures[name]["R@100"] == measures["bm25"]["R@100"] == 1.0
    # by hand: ce_only orders d3 d2 d1 d4 d5 d6; t1 finds d2 at 2 and d6 at 6, t2 d1 at 3
    ce_only = test["bm25+reranker_ce_only"]
    assert ce_only["RR@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert ce_only["MAP"] == pytest.approx(((1 / 2 + 2 / 6) / 2 + 1 / 3) / 2)
    assert test["bm25"]["MAP"] == pytest.approx(((1 / 2 + 2 / 6) / 2 + 1) / 2)
    assert dev["bm25+reranker_ce_only"]["RR@10"] == 1.0 and dev["bm25"]["RR@10"] == pytest.approx(1 / 3)
    systems, curves, per_query = score_runs(runs, QRELS, "test")
    assert systems == test and set(per_query["bm25"]) == {"t1", "t2"}
    assert curves["bm25"][100] == 1.0 and curves["bm25"][1] == pytest.approx(1 / 2)


def test_metric_rows_hold_both_splits_and_mlflow_names() -> None:
    rows = _metric_rows("run1", "toy", {"test": {"bm25": {"nDCG@10": 0.5, "R@100": 1.0}},
                                        "dev": {"bm25": {"nDCG@10": 0.25}}})
    assert sorted(rows.select("split", "measure", "value").rows()) == [
        ("dev", "nDCG@10", 0.25), ("test", "R@100", 1.0), ("test", "nDCG@10", 0.5)]
    assert rows.columns == ["run_id", "dataset", "system", "split", "measure", "value",
                            "created_at"]
    assert mlflow_metric_name("a+reranker", "nDCG@10") == "a_plus_reranker.nDCG_at_10"
    assert mlflow_metric_name("bm25", "R@100", "dev") == "dev.bm25.R_at_100"
