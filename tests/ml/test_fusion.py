"""Reranker / first-stage score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from jrr_pipeline.ml.evaluation import evaluate
from jrr_pipeline.ml.fusion import fuse, rerank_run, rerank_scores, reranked, zscore


def test_zscore_and_fuse_by_hand():
    ce, first = np.array([2.0, 0.0, -2.0]), np.array([0.1, 0.3, 0.2])
    assert zscore(ce) == pytest.approx([1.2247449, 0.0, -1.2247449])
    fused = fuse(ce, first, 0.5)
    expected = 0.5 * zscore(ce) + 0.5 * zscore(first)
    assert fused == pytest.approx(expected)
    assert list(np.argsort(-fused)) == [1, 0, 2]  # doc 1: second for the reranker, first before it
    assert fuse(ce, first, 1.0) == pytest.approx(ce)
    assert list(np.argsort(-fuse(ce, first, 0.0))) == [1, 2, 0]


def test_constant_scores_and_bad_input():
    assert zscore(np.array([3.0, 3.0])) == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError):
        fuse(np.zeros(2), np.zeros(3), 0.5)
    with pytest.raises(ValueError):
        fuse(np.zeros(2), np.zeros(2), 1.5)


FIRST = {"q1": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0, "e": 0.0}, "q2": {}}


def test_reranked_keeps_the_first_stage_tail() -> None:
    # the reranker reverses the top-3; d and e follow in first-stage order
    scores = {"q1": {"a": 0.0, "b": 1.0, "c": 2.0}}
    alone = reranked(FIRST, scores, depth=3, weight=1.0)
    assert list(alone["q1"]) == ["c", "b", "a", "d", "e"]
    assert alone["q1"] == {"c": 5.0, "b": 4.0, "a": 3.0, "d": 2.0, "e": 1.0}
    assert alone["q2"] == {}
    # fused: z(ce) = (-1.22, 0, 1.22), z(first) = (1.22, 0, -1.22) -> exactly 0 at w = 0.5: a tie,
    # broken by first-stage order
    assert list(reranked(FIRST, scores, depth=3, weight=0.5)["q1"]) == ["a", "b", "c", "d", "e"]
    assert list(reranked(FIRST, scores, depth=3, weight=0.75)["q1"]) == ["c", "b", "a", "d", "e"]
    # a shallower depth reuses the deeper scores: only a, b are reordered
    assert list(reranked(FIRST, scores, depth=2, weight=1.0)["q1"]) == ["b", "a", "c", "d", "e"]
    with pytest.raises(ValueError, match="no reranker score"):
        reranked(FIRST, scores, depth=4, weight=1.0)


def test_reranked_ties_follow_the_first_stage_not_the_doc_id() -> None:
    first = {"q1": {"z": 3.0, "m": 2.0, "a": 1.0}}
    tied = {"q1": {"z": 0.5, "m": 0.5, "a": 0.5}}
    assert list(reranked(first, tied, depth=3, weight=1.0)["q1"]) == ["z", "m", "a"]
    # first-stage ties themselves are broken by doc id
    flat = {"q1": {"y": 1.0, "x": 1.0, "w": 0.0}}
    assert list(reranked(flat, {"q1": {"x": 0.0, "y": 0.0}}, depth=2, weight=1.0)["q1"]) == [
        "x", "y", "w"]


def test_reranked_run_is_evaluated_in_its_own_order() -> None:
    """R@k beyond the depth is the first stage's; the reranked head changes RR and MAP."""
    qrels = {"q1": {"c": 1, "e": 1}}
    scores = {"q1": {"a": 0.0, "b": 1.0, "c": 2.0}}
    fused = reranked(FIRST, scores, depth=3, weight=1.0)
    first, got = (evaluate(run, qrels, ["R@5", "RR@10", "MAP"]) for run in (FIRST, fused))
    assert got["R@5"] == first["R@5"] == 1.0
    assert first["RR@10"] == pytest.approx(1 / 3) and got["RR@10"] == 1.0
    assert got["MAP"] == pytest.approx((1 + 2 / 5) / 2)


def test_rerank_run_rescores_the_top_depth_and_fuses(tiny_model_dir):
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, RerankerConfig

    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=16))
    reranker.eval()
    first = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 0.5, "c": 1.5}}
    queries = {"q1": "apple river", "q2": "music window"}
    passages = {"a": "apple pie", "b": "river bank", "c": "window glass"}
    scores = rerank_scores(reranker, first, queries, passages, depth=2)
    assert {q: list(d) for q, d in scores.items()} == {"q1": ["a", "b"], "q2": ["c", "a"]}
    expected = reranker.predict([("apple river", "apple pie"), ("apple river", "river bank")])
    assert [scores["q1"]["a"], scores["q1"]["b"]] == pytest.approx([float(x) for x in expected],
                                                                   rel=1e-5)
    fused, alone = rerank_run(reranker, first, queries, passages, depth=2, weight=0.5)
    assert alone == reranked(first, scores, 2, 1.0) and fused == reranked(first, scores, 2, 0.5)
    assert list(alone["q1"])[2] == "c"  # the tail below the depth is kept
    assert {q: set(d) for q, d in fused.items()} == {q: set(d) for q, d in first.items()}


def test_rerank_run_breaks_reranker_ties_by_first_stage_order(tiny_model_dir):
    """Two passages with one text get one reranker score: the first stage decides, not the id."""
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, RerankerConfig

    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=16))
    reranker.eval()
    first = {"q1": {"a": 1.0, "b": 2.0, "c": 3.0}}
    passages = {"a": "river bank", "b": "apple pie", "c": "apple pie"}
    scores = rerank_scores(reranker, first, {"q1": "apple"}, passages, depth=3)
    assert scores["q1"]["b"] == scores["q1"]["c"] != scores["q1"]["a"]
    _, alone = rerank_run(reranker, first, {"q1": "apple"}, passages, depth=3, weight=1.0)
    order = list(alone["q1"])
    assert order.index("c") == order.index("b") - 1  # c before b: first-stage order, not doc id
