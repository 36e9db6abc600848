"""The warm-up retriever's negative strategies on the tiny BERT: the default plan is the plain
warm-up, SimANS reads the base model's dense scores, denoising and TAS margins the warm-up
reranker's, TAS-Balanced batches come from one query cluster with anchors binned by margin, and
TAS batches with a negative cache resume bit-exactly."""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever, RetrieverConfig
from jrr_pipeline.ml.sampling.tas import margin_bins
from jrr_pipeline.ml.settings import WarmupRetrieverSettings
from jrr_pipeline.ml.training import train
from jrr_pipeline.ml.training.warmup import RetrieverWarmupTask, build_retrieval_examples
from jrr_pipeline.ml.training.warmup_plan import plan_retriever_warmup

WORDS = ("apple river music window garden doctor planet winter coffee bridge forest camera "
         "table yellow engine silver market cotton island pepper violin rocket candle mirror")


def tables(n_queries: int = 12, n_docs: int = 40, depth: int = 10, seed: int = 0
           ) -> dict[str, pl.DataFrame]:
    """Queries q0.. with positive d<i> (q0 also d<n_queries>), and a BM25-like top-``depth``
    of other docs per query (ranks 1.., falling scores)."""
    rng = random.Random(seed)
    words = WORDS.split()
    corpus = pl.DataFrame({"doc_id": [f"d{i}" for i in range(n_docs)], "title": [""] * n_docs,
                           "text": [" ".join(rng.sample(words, 5)) for _ in range(n_docs)]})
    queries = pl.DataFrame({"query_id": [f"q{i}" for i in range(n_queries)],
                            "text": [" ".join(rng.sample(words, 2)) for _ in range(n_queries)]})
    qrels = [(f"q{i}", f"d{i}") for i in range(n_queries)] + [("q0", f"d{n_queries}")]
    negatives = []
    for i in range(n_queries):
        positives = {d for q, d in qrels if q == f"q{i}"}
        others = [f"d{j}" for j in rng.sample(range(n_docs), depth + 2) if f"d{j}" not in positives]
        negatives += [(f"q{i}", d, r, 20.0 - r) for r, d in enumerate(others[:depth], start=1)]
    return {
        "queries": queries, "corpus": corpus,
        "qrels": pl.DataFrame({"query_id": [q for q, _ in qrels], "doc_id": [d for _, d in qrels],
                               "relevance": [1] * len(qrels), "split": ["train"] * len(qrels)}),
        "negatives": pl.DataFrame(negatives, schema=["query_id", "doc_id", "rank", "score"],
                                  orient="row").with_columns(source=pl.lit("bm25")),
    }


def settings(tiny_model_dir, **changes) -> WarmupRetrieverSettings:
    base = dict(base_model=str(tiny_model_dir), n_negatives=2, batch_size=4, max_steps=4,
                lr=1e-3, query_max_length=8, passage_max_length=16, rank_window_end=10,
                score_depth=6, checkpoint_every=2, log_every=1, bf16="off", seed=3)
    return WarmupRetrieverSettings(**{**base, **changes})


def retriever_of(tiny_model_dir) -> DenseRetriever:
    return DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=16))


@pytest.fixture(scope="module")
def reranker_dir(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("reranker") / "model"
    CrossEncoderReranker.from_pretrained(str(tiny_model_dir)).save_pretrained(out)
    return str(out)


def pool_of(data: dict, qid: str, depth: int) -> list[str]:
    neg = data["negatives"].filter(pl.col("query_id") == qid).sort("rank")
    return neg["doc_id"].to_list()[:depth]


def texts(data: dict) -> tuple[dict[str, str], dict[str, str]]:
    corpus, queries = data["corpus"], data["queries"]
    return (dict(zip(queries["query_id"], queries["text"], strict=True)),
            dict(zip(corpus["doc_id"], corpus["text"], strict=True)))


def reranker_logits(reranker_dir: str, data: dict, pairs: list[tuple[str, str]]) -> dict:
    qtext, ptext = texts(data)
    reranker = CrossEncoderReranker.from_pretrained(reranker_dir)
    scores = reranker.predict([(qtext[q], ptext[d]) for q, d in pairs])
    return dict(zip(pairs, scores.astype(np.float64).tolist(), strict=True))


def test_default_plan_is_exactly_the_plain_warmup(tiny_model_dir):
    data = tables()
    cfg = settings(tiny_model_dir)
    plan = plan_retriever_warmup(cfg, data, retriever_of(tiny_model_dir))
    plain = build_retrieval_examples(**data, n_negatives=2, seed=3, source="bm25",
                                     rank_window=(1, 10))
    assert plan.examples == plain and plan.batching is None and plan.cache is None
    assert plan.info["scored_pairs"] is None  # nothing was scored


def test_simans_draws_around_the_base_models_positive_score(tiny_model_dir):
    data = tables()
    retriever = retriever_of(tiny_model_dir)
    cfg = settings(tiny_model_dir, sampler="simans", simans_a=1e4, simans_b=0.0, n_negatives=1)
    examples = plan_retriever_warmup(cfg, data, retriever).examples
    qtext, ptext = texts(data)

    def score(q: str, d: str) -> float:
        a = retriever.embed([qtext[q]], "query")[0].astype(np.float64)
        b = retriever.embed([ptext[d]], "passage")[0].astype(np.float64)
        return float(a @ b) / retriever.config.temperature

    checked = 0
    for example in examples:
        qid = example.query_id
        best = max(score(qid, p) for p in example.positive_ids)
        gaps = sorted((abs(score(qid, d) - best), d) for d in pool_of(data, qid, 6))
        if gaps[1][0] ** 2 - gaps[0][0] ** 2 > 1e-3:  # a clear nearest (a = 1e4: all the mass)
            assert example.negative_ids == [gaps[0][1]], (qid, gaps[:3])
            checked += 1
        assert set(example.negative_ids) <= set(pool_of(data, qid, 6))  # score_depth 6
    assert checked >= len(examples) // 2


def test_denoised_keeps_only_what_the_reranker_does_not_doubt(tiny_model_dir, reranker_dir):
    data = tables()
    cfg = settings(tiny_model_dir, sampler="denoised", denoised_tau_neg=0.5, n_negatives=3)
    plan = plan_retriever_warmup(cfg, data, retriever_of(tiny_model_dir), reranker_dir)
    pairs = [(q, d) for q, d in data["qrels"].select("query_id", "doc_id").iter_rows()]
    pairs += [(q, d) for q in data["queries"]["query_id"] for d in pool_of(data, q, 6)]
    logits = reranker_logits(reranker_dir, data, pairs)
    doubted = kept = 0
    for example in plan.examples:
        qid = example.query_id
        best = max(logits[(qid, p)] for p in example.positive_ids)
        prob = {d: 1 / (1 + math.exp(-(logits[(qid, d)] - best))) for d in pool_of(data, qid, 6)}
        clean = {d for d, p in prob.items() if p < 0.5}
        pool_picks = [d for d in example.negative_ids if d in prob]
        assert set(pool_picks) <= clean  # a doubted candidate is never a negative
        assert len(pool_picks) == min(3, len(clean))  # the rest are random corpus documents
        doubted += len(prob) - len(clean)
        kept += len(clean)
    assert doubted > 0 and kept > 0  # the threshold did cut


def test_reranker_strategies_need_the_reranker(tiny_model_dir):
    for change in ({"sampler": "denoised"}, {"batching": "tas_balanced"}):
        cfg = settings(tiny_model_dir, **change)
        assert cfg.needs_reranker()
        with pytest.raises(ValueError, match="needs the warm-up reranker"):
            plan_retriever_warmup(cfg, tables(), retriever_of(tiny_model_dir))
    assert not settings(tiny_model_dir, sampler="simans", negatives="cache").needs_reranker()


def test_tas_balanced_anchors_bins_and_cluster_batches(tiny_model_dir, reranker_dir):
    data = tables()
    cfg = settings(tiny_model_dir, batching="tas_balanced", tas_clusters=3, tas_bins=3)
    plan = plan_retriever_warmup(cfg, data, retriever_of(tiny_model_dir), reranker_dir)
    examples, order = plan.examples, plan.batching
    pairs = [(q, d) for q, d in data["qrels"].sort("query_id", "doc_id")
             .select("query_id", "doc_id").iter_rows()]
    assert len(examples) == 6 * len(pairs)  # one per (pair, scored negative)
    logits = reranker_logits(reranker_dir, data, pairs + [
        (q, d) for q in data["queries"]["query_id"] for d in pool_of(data, q, 6)])
    for k in range(len(examples)):
        pair, anchor = divmod(k, 6)
        qid, positive = pairs[pair]
        example = examples[k]
        pool = pool_of(data, qid, 6)
        assert (example.query_id, example.positive_id) == (qid, positive)
        assert example.negative_ids[0] == pool[anchor]
        assert not set(example.negative_ids) & example.positive_ids
        bins = margin_bins(np.array([logits[(qid, positive)] - logits[(qid, d)] for d in pool]), 3)
        same = [d for d, b in zip(pool, bins, strict=True) if b == bins[anchor] and d != pool[anchor]]
        if same:  # the companion comes from the anchor's margin bin when the bin has one
            assert example.negative_ids[1] in same
        assert examples[k] == example  # built the same way on every call
    assert order.batches_per_epoch(4, 1) == math.ceil(len(pairs) / 4)
    cluster_of = {int(q): c for c, members in enumerate(order.clusters) for q in members}
    queries = sorted({q for q, _ in pairs})
    for batch in order.order(0, 4).reshape(-1, 4):
        ids = [examples[int(k)].query_id for k in batch]
        assert len(set(ids)) == 4  # distinct queries
        starts = {cluster_of[queries.index(q)] for q in ids}
        assert len(starts) <= 2  # one cluster (topped up from its nearest when small)


def test_tas_batches_with_a_negative_cache_resume_bit_exactly(tiny_model_dir, reranker_dir,
                                                              tmp_path):
    cfg = settings(tiny_model_dir, batching="tas_balanced", tas_clusters=3, negatives="cache",
                   cache_size=16, cache_refresh=0.25)

    def run(name: str, **kwargs) -> tuple[RetrieverWarmupTask, object]:
        torch.manual_seed(0)
        retriever = retriever_of(tiny_model_dir)
        plan = plan_retriever_warmup(cfg, tables(), retriever, reranker_dir)
        task = RetrieverWarmupTask(retriever, cache=plan.cache)
        result = train(task, plan.examples, cfg.train_config(), tmp_path / name, progress=False,
                       batching=plan.batching, **kwargs)
        return task, result

    full, result = run("full")
    assert result.history[-1][1]["negatives_per_query"] >= 16 + 4 * 3 - 1 - 2
    assert int(full.cache.cursor) == (3 * 4) % 16  # 3 refreshes of 4 after the first fill
    state = tmp_path / "state"
    _, partial = run("part", state_dir=state, stop_after_steps=2)
    assert partial.step == 2
    resumed, result = run("part", state_dir=state)
    assert result.resumed_from_step == 2
    for (name, a), b in zip(full.retriever.state_dict().items(),
                            resumed.retriever.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(full.cache.embeddings, resumed.cache.embeddings)


def test_a_run_file_trains_with_every_strategy_at_once(tiny_model_dir, reranker_dir, tmp_path):
    from jrr_pipeline.ml.training.launch import read_metrics, run, write_run_file

    cfg = settings(tiny_model_dir, sampler="simans", batching="tas_balanced", tas_clusters=2,
                   negatives="cache", cache_size=8, max_steps=2)
    path = write_run_file(tmp_path / "run", "warmup_retriever", cfg, tables(), tmp_path / "model",
                          tmp_path / "state", models={"reranker": reranker_dir}, progress=False)
    result = run(path)
    assert result["completed"] and result["step"] == 2
    assert result["examples"] == result["n_examples"] == 13 * 6  # 13 pairs x 6 scored anchors
    assert result["scored_pairs"] == 13 + 12 * 6  # positives + every query's scored pool
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(m["metrics"]["negatives_per_query"] > 8 for m in metrics)
    assert DenseRetriever.from_pretrained(str(tmp_path / "model")).embedding_dim == 32
