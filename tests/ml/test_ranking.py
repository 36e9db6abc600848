"""Deterministic orders: score, then a prior order, then doc id; orders as rank scores."""

from __future__ import annotations

import math

import pytest

from jrr_pipeline.ml.ranking import order, rank_scores, ranked_run


def test_order_by_score_then_prior_then_doc_id() -> None:
    scores = {"d": 1.0, "c": 2.0, "b": 1.0, "a": 1.0, "e": 0.5}
    assert order(scores) == ["c", "a", "b", "d", "e"]
    # ties follow the prior; a tied id the prior lacks comes after those it has
    assert order(scores, prior=["d", "b"]) == ["c", "d", "b", "a", "e"]
    with pytest.raises(ValueError, match="NaN"):
        order({"a": math.nan})


def test_rank_scores_strictly_decrease() -> None:
    assert rank_scores(["x", "y", "z"]) == {"x": 3.0, "y": 2.0, "z": 1.0}
    assert rank_scores([]) == {}
    with pytest.raises(ValueError, match="twice"):
        rank_scores(["x", "x"])


def test_ranked_run_breaks_ties_by_the_prior_run() -> None:
    run = {"q1": {"a": 0.0, "b": 0.0, "c": 1.0}, "q2": {"a": 5.0, "b": 5.0}}
    first_stage = {"q1": {"a": 0.2, "b": 0.9, "c": 0.1}}
    assert list(ranked_run(run, first_stage)["q1"]) == ["c", "b", "a"]
    assert ranked_run(run, first_stage)["q2"] == {"a": 2.0, "b": 1.0}  # no prior: by doc id
    assert list(ranked_run(run)["q1"]) == ["c", "a", "b"]
