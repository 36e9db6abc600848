"""Denoising decisions and hybrid lists on a hand-built frame."""

from __future__ import annotations

import math

import polars as pl
import pytest

from jrr_pipeline.ml.denoise import (
    calibrate,
    decide,
    denoise_stats,
    hybrid_lists,
    merge_retrieved,
)
from jrr_pipeline.ml.settings import DenoisedCandidatesSettings


def frame() -> pl.DataFrame:
    rows = [  # query, doc, source, rank, positive, logit
        ("q1", "p1", "qrels", 0, True, 3.0),
        ("q1", "a", "bm25", 1, False, 5.0),   # above the positive: likely false negative
        ("q1", "b", "bm25+dense", 2, False, -2.0),
        ("q1", "c", "dense", 3, False, 1.5),
        ("q1", "d", "bm25", 4, False, -4.0),
        ("q1", "e", "dense", 5, False, 2.5),
        ("q2", "p2", "qrels", 0, True, 0.0),
        ("q2", "f", "bm25", 1, False, -5.0),
    ]
    return pl.DataFrame(rows, schema=["query_id", "doc_id", "source", "rank", "is_positive", "ce_score"],
                        orient="row")


def test_merge_retrieved_joins_sources_and_keeps_best_rank():
    negatives = pl.DataFrame({
        "query_id": ["q", "q", "q", "q"], "doc_id": ["x", "x", "y", "z"],
        "rank": [3, 1, 2, 40], "source": ["bm25", "dense", "bm25", "dense"]})
    merged = merge_retrieved(negatives, top_k=10, sources=["bm25", "dense"])
    assert merged.rows() == [("q", "x", "bm25+dense", 1), ("q", "y", "bm25", 2)]


def test_relative_calibration_is_sigmoid_of_the_gap_to_the_positive():
    out = calibrate(frame(), "relative")
    prob = dict(zip(out["doc_id"], out["ce_prob"], strict=True))
    assert prob["p1"] == pytest.approx(0.5)
    assert prob["b"] == pytest.approx(1 / (1 + math.exp(5.0)))
    assert prob["a"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    softmax = calibrate(frame(), "softmax").filter(pl.col("query_id") == "q2")["ce_prob"].to_list()
    assert sum(softmax) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="calibration 'platt'"):
        calibrate(frame(), "platt")


def test_decisions_and_stats():
    config = DenoisedCandidatesSettings(tau_neg=0.1, tau_pos=0.8, promote_pseudo_positives=True)
    decided = decide(calibrate(frame(), "relative"), config)
    decision = dict(zip(decided["doc_id"], decided["decision"], strict=True))
    assert decision == {"p1": "positive", "a": "pseudo_positive", "b": "negative", "c": "dropped",
                        "d": "negative", "e": "dropped", "p2": "positive", "f": "negative"}
    stats = denoise_stats(decided)
    assert stats["retrieved"] == 6 and stats["negative"] == 3 and stats["dropped"] == 2
    assert stats["pseudo_positive_share"] == pytest.approx(1 / 6, abs=1e-4)
    assert stats["bm25_flagged"] == 1 and stats["dense_flagged"] == 2  # a ; c, e


def test_hybrid_lists_label_every_row_and_report_shortfall():
    config = DenoisedCandidatesSettings(tau_neg=0.1, list_length=4, denoised_ratio=0.5, seed=0)
    decided = decide(calibrate(frame(), "relative"), config)
    candidates, stats = hybrid_lists(decided, config)
    q1 = candidates.filter(pl.col("query_id") == "q1")
    assert q1.filter(pl.col("label") == 1)["doc_id"].to_list() == ["p1"]
    negatives = q1.filter(pl.col("label") == 0)
    assert negatives.height == 3
    denoised = negatives.filter(pl.col("source").str.starts_with("denoised:"))
    assert sorted(denoised["doc_id"]) == ["b", "d"]  # 2 of 3 from the denoised pool (round(1.5))
    raw = negatives.filter(pl.col("source").str.starts_with("raw:"))
    assert raw.height == 1 and raw["doc_id"][0] in {"a", "c", "e"}
    assert set(candidates["source"]) <= {"qrels", "denoised:bm25", "denoised:bm25+dense",
                                         "raw:bm25", "raw:dense", "raw:bm25+dense"}
    # q2 has a single retrieved candidate: its list is short by 2, and the stats say so
    assert candidates.filter(pl.col("query_id") == "q2").height == 2
    assert stats == {"queries": 2, "short_lists": 1, "missing_negatives": 2,
                     "short_examples": {"q2": 2}}
    assert candidates.filter((pl.col("label") == 0) & pl.col("doc_id").is_in(["p1", "p2"])).height == 0


def test_config_is_validated():
    with pytest.raises(ValueError, match="tau_pos"):
        DenoisedCandidatesSettings(tau_neg=0.5, tau_pos=0.2)
    with pytest.raises(ValueError, match="list_length"):
        DenoisedCandidatesSettings(list_length=1)
