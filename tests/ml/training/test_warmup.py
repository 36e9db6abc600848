"""Warm-up examples (sampling rules) and the two warm-up tasks on the tiny BERT."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)
from jrr_pipeline.ml.training import TrainConfig, train
from jrr_pipeline.ml.training.warmup import (
    RerankerWarmupTask,
    RetrievalExample,
    RetrieverWarmupTask,
    build_retrieval_examples,
)

WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter",
         "coffee", "bridge", "forest", "camera"]
# Negatives come from a disjoint vocabulary: no passage is both a positive and a negative in a
# batch (an in-batch duplicate would cap the achievable loss at log(copies)).
DISTRACTORS = ["table", "yellow", "engine", "silver", "market", "cotton", "island"]


def _tables(n_docs: int = 12):
    corpus = pl.DataFrame({
        "doc_id": [f"d{i}" for i in range(n_docs)],
        "title": [f"T{i}" if i % 2 == 0 else "" for i in range(n_docs)],
        "text": [f"text {i}" for i in range(n_docs)],
    })
    queries = pl.DataFrame({"query_id": ["q1", "q2", "q3", "q4"],
                            "text": ["one", "two", "three", "four"]})
    qrels = pl.DataFrame({
        "query_id": ["q1", "q1", "q1", "q2", "q3", "q4"],
        "doc_id": ["d0", "d1", "d2", "d3", "d4", "d5"],
        "relevance": [2, 1, 0, 1, 1, 1],
        "split": ["train", "train", "train", "train", "test", "train"],
    })
    # q1: ranks 1..8 (d1 is a positive, must never be a negative); q2: only out-of-window and
    # other-source rows; q4: none at all
    negatives = pl.DataFrame({
        "query_id": ["q1"] * 8 + ["q2", "q2"],
        "doc_id": ["d1", "d6", "d7", "d8", "d9", "d10", "d11", "d2", "d6", "d7"],
        "rank": [1, 2, 3, 4, 5, 6, 7, 8, 50, 2],
        "score": [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 1],
        "source": ["bm25"] * 9 + ["dense"],
    })
    return queries, corpus, qrels, negatives


def test_build_examples_sampling_rules() -> None:
    queries, corpus, qrels, negatives = _tables()
    kwargs = dict(n_negatives=3, seed=1, source="bm25", rank_window=(1, 7))
    ex = build_retrieval_examples(queries, corpus, qrels, negatives, **kwargs)
    # (q1,d0), (q1,d1), (q2,d3), (q4,d5): relevance 0 and the test split are left out
    assert [(e.query, e.positive) for e in ex] == [
        ("one", "T0 text 0"), ("one", "text 1"), ("two", "text 3"), ("four", "text 5")]
    window = {"T6 text 6", "text 7", "T8 text 8", "text 9", "T10 text 10", "text 11"}
    for e in ex[:2]:
        assert len(e.negatives) == 3 and len(set(e.negatives)) == 3
        assert set(e.negatives) <= window  # in window, bm25, never a labelled doc (d0, d1, d2)
    for e in ex[2:]:  # no usable negatives: random corpus docs, never the query's positive
        assert len(e.negatives) == 3 and e.positive not in e.negatives
    assert "T2 text 2" not in ex[0].negatives  # rank 8 is outside the window
    assert ex == build_retrieval_examples(queries, corpus, qrels, negatives, **kwargs)
    other = build_retrieval_examples(queries, corpus, qrels, negatives, **{**kwargs, "seed": 2})
    assert [e.negatives for e in other] != [e.negatives for e in ex]


def test_build_examples_takes_all_when_pool_is_small() -> None:
    queries, corpus, qrels, negatives = _tables()
    ex = build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=6, seed=0,
                                  rank_window=(1, 7), source="bm25")
    assert set(ex[0].negatives) == {"T6 text 6", "text 7", "T8 text 8", "text 9", "T10 text 10",
                                    "text 11"}


def test_build_examples_errors() -> None:
    queries, corpus, qrels, negatives = _tables()
    with pytest.raises(ValueError, match="table 'qrels'.*field 'doc_id'.*'d99'"):
        bad = qrels.with_columns(pl.when(pl.col("doc_id") == "d3").then(pl.lit("d99"))
                                 .otherwise(pl.col("doc_id")).alias("doc_id"))
        build_retrieval_examples(queries, corpus, bad, negatives, n_negatives=2, seed=0)
    with pytest.raises(ValueError, match="table 'negatives': field 'rank'"):
        build_retrieval_examples(queries, corpus, qrels, negatives.drop("rank"), 2, 0)
    with pytest.raises(ValueError, match="too few documents"):
        first6 = pl.col("doc_id").is_in([f"d{i}" for i in range(6)])
        build_retrieval_examples(queries, corpus.head(6), qrels.filter(first6),
                                 negatives.filter(first6), n_negatives=5, seed=0)


def _learnable_examples(n_neg: int) -> list[RetrievalExample]:
    out = []
    for i, word in enumerate(WORDS):
        others = [DISTRACTORS[(i + k) % len(DISTRACTORS)] for k in range(n_neg)]
        out.append(RetrievalExample(
            query=f"{word}", positive=f"{word} {word} {word}",
            negatives=[f"{o} {o} {o}" for o in others]))
    return out


def _eval(task, batch) -> float:
    for module in task.modules().values():
        module.eval()
    with torch.no_grad():
        loss = float(task.loss(batch)[0])
    for module in task.modules().values():
        module.train()
    return loss


def test_retriever_warmup_learns_and_saves(tiny_model_dir, tmp_path) -> None:
    torch.manual_seed(0)
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=16))
    task = RetrieverWarmupTask(retriever)
    examples = _learnable_examples(2)
    _, metrics = task.loss(examples[:4])
    assert metrics["passages_in_logits"] == 4 * 3  # single process: the local batch
    before = _eval(task, examples)
    cfg = TrainConfig(epochs=8, batch_size=6, lr=3e-3, warmup_ratio=0.1, seed=0, log_every=2)
    result = train(task, examples, cfg, tmp_path / "retriever", progress=False)
    after = _eval(task, examples)
    assert after < 0.2 * before, (before, after)
    assert result.history[-1][1]["in_batch_acc"] >= 0.8
    reloaded = DenseRetriever.from_pretrained(str(tmp_path / "retriever"))
    texts = ["apple", "river river"]
    assert torch.allclose(torch.from_numpy(reloaded.embed(texts, "query")),
                          torch.from_numpy(retriever.embed(texts, "query")), atol=1e-6)


def test_reranker_warmup_learns(tiny_model_dir, tmp_path) -> None:
    torch.manual_seed(0)
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=24))
    task = RerankerWarmupTask(reranker)
    examples = _learnable_examples(3)
    before = _eval(task, examples)
    # a fresh head needs a large lr and enough steps before the loss leaves log(4)
    cfg = TrainConfig(epochs=15, batch_size=6, lr=1e-2, warmup_ratio=0.1, seed=0, log_every=2)
    result = train(task, examples, cfg, tmp_path / "reranker", progress=False)
    after = _eval(task, examples)
    assert result.history[0][1]["loss_prior"] == pytest.approx(math.log(4))
    assert after < 0.3 * before, (before, after)
    assert result.history[-1][1]["list_acc"] >= 0.8
    assert (tmp_path / "reranker" / "config.json").is_file()


def test_uneven_negatives_rejected(tiny_model_dir) -> None:
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir))
    batch = [RetrievalExample("a", "b", ["c"]), RetrievalExample("d", "e", [])]
    with pytest.raises(ValueError, match="same number of negatives"):
        RetrieverWarmupTask(retriever).loss(batch)


def test_gradient_checkpointing_gives_the_same_training(tiny_model_dir, tmp_path) -> None:
    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        retriever = DenseRetriever.from_pretrained(
            str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=16))
        cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, seed=0,
                          gradient_checkpointing=checkpointing)
        train(RetrieverWarmupTask(retriever), _learnable_examples(2), cfg, tmp_path / "o",
              progress=False)
        active = any(getattr(m, "gradient_checkpointing", False) is True
                     for m in retriever.encoder.modules())
        assert active is checkpointing
        weights.append(retriever.state_dict())
    for key, value in weights[0].items():
        assert torch.allclose(value, weights[1][key], atol=1e-6), key


def test_build_examples_switch_sampler_by_name() -> None:
    queries, corpus, qrels, negatives = _tables()
    # SimANS with a sharp width around the positive's score 6.0: d8 (score 6) is always drawn
    with_pos = negatives.with_columns(positive_score=pl.lit(6.0))
    simans = build_retrieval_examples(queries, corpus, qrels, with_pos, n_negatives=1, seed=3,
                                      source="bm25", rank_window=(1, 7),
                                      sampler={"name": "simans", "a": 50.0, "b": 0.0})
    assert [e.negatives for e in simans[:2]] == [["T8 text 8"], ["T8 text 8"]]
    uniform = build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=3, seed=3,
                                       source="bm25", rank_window=(1, 7),
                                       sampler={"name": "uniform", "rank_start": 2, "rank_end": 4})
    assert set(uniform[0].negatives) == {"T6 text 6", "text 7", "T8 text 8"}
    with pytest.raises(ValueError, match="positive's score"):
        build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=1, seed=3,
                                 source="bm25", sampler={"name": "simans"})
    with pytest.raises(ValueError, match="unknown sampler"):
        build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=1, seed=3,
                                 sampler={"name": "hardest"})


def test_examples_carry_ids_and_all_positives_of_their_query() -> None:
    queries, corpus, qrels, negatives = _tables()
    ex = build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=3, seed=1,
                                  source="bm25", rank_window=(1, 7))
    assert [(e.query_id, e.positive_id) for e in ex] == [
        ("q1", "d0"), ("q1", "d1"), ("q2", "d3"), ("q4", "d5")]
    assert ex[0].positive_ids == ex[1].positive_ids == frozenset({"d0", "d1"})
    assert [corpus["text"][int(d[1:])] in n for e in ex for d, n in
            zip(e.negative_ids, e.negatives, strict=True)] == [True] * 12


def test_a_querys_second_positive_is_never_its_in_batch_negative() -> None:
    from jrr_pipeline.ml.training.warmup import positives_mask

    queries, corpus, qrels, negatives = _tables()
    ex = build_retrieval_examples(queries, corpus, qrels, negatives, n_negatives=3, seed=1,
                                  source="bm25", rank_window=(1, 7))
    batch = ex[:3]  # (q1, d0), (q1, d1), (q2, d3): 4 columns each
    keys = [k for e in batch for k in e.passage_keys()]
    mask = positives_mask(batch, keys)
    assert mask.shape == (3, 12)
    assert mask[0].nonzero().flatten().tolist() == [4]  # d1, q1's other positive
    assert mask[1].nonzero().flatten().tolist() == [0]  # d0
    assert not mask[2].any()
