"""Reranker / first-stage score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from jrr_pipeline.ml.fusion import fuse, zscore


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


def test_rerank_run_rescores_the_top_depth_and_fuses(tiny_model_dir):
    from jrr_pipeline.ml.fusion import rerank_run
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, RerankerConfig

    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(max_length=16))
    reranker.eval()
    first = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 0.5, "c": 1.5}}
    queries = {"q1": "apple river", "q2": "music window"}
    passages = {"a": "apple pie", "b": "river bank", "c": "window glass"}
    fused, alone = rerank_run(reranker, first, queries, passages, depth=2, weight=0.5)
    assert {q: set(d) for q, d in alone.items()} == {"q1": {"a", "b"}, "q2": {"a", "c"}}
    expected = reranker.predict([("apple river", "apple pie"), ("apple river", "river bank")])
    assert [alone["q1"]["a"], alone["q1"]["b"]] == pytest.approx([float(x) for x in expected], rel=1e-5)
    mixed = fuse(np.array([alone["q1"]["a"], alone["q1"]["b"]]), np.array([3.0, 2.0]), 0.5)
    assert [fused["q1"]["a"], fused["q1"]["b"]] == pytest.approx(list(mixed))
    only, _ = rerank_run(reranker, first, queries, passages, depth=2, weight=1.0)
    assert only == alone  # weight 1 is the reranker alone, unchanged
