"""Metrics against values computed by hand (trec_eval definitions: linear gain, log2 discount)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from jrr_pipeline.ml.evaluation import (
    DEFAULT_MEASURES,
    eval_split,
    evaluate,
    monitor_split,
    per_query,
    selection_info,
)
from jrr_pipeline.ml.sparse import BM25Index, run_from_search

QRELS = pl.DataFrame(
    {
        "query_id": ["q1", "q1", "q1", "q2", "q3", "q9"],
        "doc_id": ["d1", "d2", "d5", "d3", "d4", "d1"],
        "relevance": [2, 1, 0, 1, 1, 1],
        "split": ["test", "test", "test", "test", "test", "train"],
    },
    schema_overrides={"relevance": pl.Int32},
)
# q1: d5 (judged 0), d2 (rel 1), d1 (rel 2), d6; q2: its only relevant doc at rank 6;
# q3 is missing from the run; q9 is a train query, found at rank 1.
RUN = {
    "q1": {"d5": 0.9, "d2": 0.8, "d1": 0.7, "d6": 0.6},
    "q2": {"d7": 0.9, "d8": 0.8, "d9": 0.7, "d10": 0.6, "d11": 0.5, "d3": 0.4},
    "q9": {"d1": 5.0, "d2": 1.0},
}
NDCG_Q1 = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
NDCG_Q2 = 1 / math.log2(7)
AP_Q1 = (1 / 2 + 2 / 3) / 2


def test_hand_computed_means_count_missing_queries_as_zero() -> None:
    got = evaluate(RUN, QRELS, split="test")
    assert list(got) == list(DEFAULT_MEASURES)
    expected = {
        "nDCG@10": (NDCG_Q1 + NDCG_Q2 + 0) / 3,
        "RR@10": (1 / 2 + 1 / 6 + 0) / 3,
        "R@1": 0.0,
        "R@5": (1 + 0 + 0) / 3,
        "R@10": (1 + 1 + 0) / 3,
        "R@20": 2 / 3,
        "R@100": 2 / 3,
        "MAP": (AP_Q1 + 1 / 6 + 0) / 3,
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_cutoffs_and_aliases() -> None:
    got = evaluate(RUN, QRELS, measures=["R@2", "nDCG@3", "RR@5", "MRR@10", "AP"], split="test")
    assert got["R@2"] == pytest.approx((1 / 2) / 3)
    assert got["nDCG@3"] == pytest.approx(NDCG_Q1 / 3)  # q2's hit at rank 6 is cut off
    assert got["RR@5"] == pytest.approx((1 / 2) / 3)
    assert got["MRR@10"] == pytest.approx((1 / 2 + 1 / 6) / 3)
    assert got["AP"] == pytest.approx((AP_Q1 + 1 / 6) / 3)


def test_split_filtering_and_mapping_qrels() -> None:
    everything = evaluate(RUN, QRELS, measures=["nDCG@10"], split=None)
    assert everything["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2 + 0 + 1) / 4)
    train = evaluate(RUN, QRELS, measures=["nDCG@10", "MAP"], split="train")
    assert train == {"nDCG@10": pytest.approx(1.0), "MAP": pytest.approx(1.0)}
    as_mapping = {"q1": {"d1": 2, "d2": 1}, "q3": {"d4": 1}}
    assert evaluate(RUN, as_mapping, ["R@5"])["R@5"] == pytest.approx(0.5)


def test_per_query_includes_unanswered_queries() -> None:
    got = per_query(RUN, QRELS, "nDCG@10", split="test")
    assert got.keys() == {"q1", "q2", "q3"}
    assert got["q1"] == pytest.approx(NDCG_Q1)
    assert got["q2"] == pytest.approx(NDCG_Q2)
    assert got["q3"] == 0.0
    empty_run = per_query({}, QRELS, "RR@10", split="test")
    assert empty_run == {"q1": 0.0, "q2": 0.0, "q3": 0.0}


def test_monitor_split_prefers_dev_then_test_then_train() -> None:
    splits = lambda *names: pl.DataFrame({"split": list(names)})  # noqa: E731
    assert monitor_split(splits("train", "test", "dev")) == "dev"
    assert monitor_split(splits("train", "test")) == "test"
    assert monitor_split(splits("train")) == "train"


def test_eval_split_and_errors() -> None:
    assert eval_split(QRELS) == "test"
    assert eval_split(QRELS.with_columns(pl.col("split").replace("test", "dev"))) == "dev"
    with pytest.raises(ValueError, match="no test or dev split"):
        eval_split(QRELS.filter(pl.col("split") == "train"))
    with pytest.raises(ValueError, match="no qrels for split 'dev'"):
        evaluate(RUN, QRELS, split="dev")
    with pytest.raises(ValueError, match="unknown measure 'Bogus@3'"):
        evaluate(RUN, QRELS, measures=["Bogus@3"])
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate(RUN, QRELS.drop("relevance"))


def test_bm25_run_end_to_end() -> None:
    docs = ["cats purr softly", "dogs bark loudly", "fish swim deep", "birds sing songs"]
    index = BM25Index.build(["c", "d", "f", "b"], docs)
    qids = ["q1", "q2", "q3"]
    found, scores = index.search(["purring cats", "barking dog", "singing"], k=4)
    qrels = pl.DataFrame(
        {"query_id": qids, "doc_id": ["c", "d", "f"], "relevance": [1, 1, 1], "split": ["test"] * 3}
    )
    got = evaluate(run_from_search(qids, found, scores), qrels, ["R@1", "RR@10"])
    # q3 ("singing") finds "birds sing songs" first, the relevant fish doc only with score 0
    assert found[2][0] == "b" and np.all(scores[2, 1:] == 0)
    assert got["R@1"] == pytest.approx(2 / 3)
    assert 2 / 3 < got["RR@10"] < 1


def test_rr_cutoff_is_applied() -> None:
    # relevant doc at rank 13: RR@10 must be 0 while the uncut RR is 1/13
    run = {"q1": {f"x{i}": 100.0 - i for i in range(20)}}
    run["q1"]["x12"] = 100.0 - 12
    qrels = {"q1": {"x12": 1}}
    got = evaluate(run, qrels, ["RR@10", "RR", "R@10", "R@20"])
    assert got == {"RR@10": 0.0, "RR": pytest.approx(1 / 13), "R@10": 0.0, "R@20": 1.0}


@pytest.mark.parametrize(("relevant", "rank"), [("a", 1), ("b", 2), ("c", 3)])
def test_tied_documents_get_one_order_for_every_measure(relevant: str, rank: int) -> None:
    # three docs with one score: every measure must see them ranked by doc id (a, b, c); before,
    # pytrec_eval (nDCG, AP) and the msmarco provider (RR@10) ordered the tie differently
    run = {"q1": {"c": 1.0, "a": 1.0, "b": 1.0}}
    got = evaluate(run, {"q1": {relevant: 1}}, ["nDCG@10", "RR@10", "MAP", "R@1"])
    assert got["nDCG@10"] == pytest.approx(1 / math.log2(rank + 1))
    assert got["RR@10"] == pytest.approx(1 / rank)
    assert got["MAP"] == pytest.approx(1 / rank)
    assert got["R@1"] == (1.0 if rank == 1 else 0.0)


def test_untied_runs_score_as_before() -> None:
    # ranks replace scores, so a run with distinct scores keeps its figures exactly
    raw = {q: {d: s * 3.7 - 100 for d, s in docs.items()} for q, docs in RUN.items()}
    assert evaluate(raw, QRELS, split="test") == evaluate(RUN, QRELS, split="test")
    assert evaluate(RUN, QRELS, ["nDCG@10"], split="test")["nDCG@10"] == pytest.approx(
        (NDCG_Q1 + NDCG_Q2) / 3)


def test_selection_info_names_the_dev_split_and_its_origin() -> None:
    dev = pl.DataFrame({"query_id": ["q5", "q5", "q6"], "doc_id": ["d1", "d2", "d3"],
                        "relevance": [1, 1, 1], "split": ["dev"] * 3},
                       schema_overrides={"relevance": pl.Int32})
    with_dev = pl.concat([QRELS, dev])
    assert selection_info(with_dev, "carved from train") == {
        "split": "dev", "origin": "carved from train", "queries": 2}
    assert selection_info(with_dev)["origin"] == "dataset"
    no_dev = selection_info(QRELS, "carved from train")
    assert no_dev["split"] is None and no_dev["queries"] == 0 and "no dev split" in no_dev["note"]
    dev_only = selection_info(pl.concat([QRELS.filter(pl.col("split") == "train"), dev]))
    assert dev_only["queries"] == 2 and "no test split" in dev_only["note"]
    with pytest.raises(ValueError, match="origin"):
        selection_info(with_dev, "test")
