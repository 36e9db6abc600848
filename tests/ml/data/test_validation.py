"""Validation helpers on stored frames (the asset checks' logic)."""

from __future__ import annotations

import polars as pl

from jrr_pipeline.ml.data import duplicate_ids, empty_texts, split_overlap, unresolved_qrels

CORPUS = pl.DataFrame({
    "doc_id": ["d1", "d2", "d1", "d3", "d2", "d1"],
    "title": ["", "", "", "", "", ""],
    "text": ["a", " \t", "b", None, "", "c"],
})
QUERIES = pl.DataFrame({"query_id": ["q1", "q2"], "text": ["x", "y"]})
QRELS = pl.DataFrame(
    {
        "query_id": ["q1", "q2", "q9", "q2", "q1", "q8", "q9"],
        "doc_id": ["d1", "dX", "d1", "d2", "d3", "dY", "dX"],
        "relevance": [1, 1, 0, 2, 1, 1, 1],
        "split": ["train", "train", "dev", "test", "dev", "test", "test"],
    },
    schema_overrides={"relevance": pl.Int32},
)


def test_duplicate_ids_in_first_appearance_order() -> None:
    assert duplicate_ids(CORPUS, "doc_id") == ["d1", "d2"]
    assert duplicate_ids(QUERIES, "query_id") == []


def test_empty_texts_counts_null_empty_and_whitespace() -> None:
    assert empty_texts(CORPUS, "doc_id") == ["d2", "d3"]
    assert empty_texts(QUERIES, "query_id") == []
    titled = pl.DataFrame({"id": [1, 2], "title": ["t", ""]})
    assert empty_texts(titled, "id", text_column="title") == ["2"]


def test_unresolved_qrels() -> None:
    assert unresolved_qrels(QRELS, CORPUS, QUERIES) == {
        "doc_id": ["dX", "dY"], "query_id": ["q9", "q8"]
    }
    clean = QRELS.filter(pl.col("query_id").is_in(["q1", "q2"]) & (pl.col("doc_id") != "dX"))
    assert unresolved_qrels(clean, CORPUS, QUERIES) == {"doc_id": [], "query_id": []}


def test_split_overlap() -> None:
    assert split_overlap(QRELS) == ["q2"]
    assert split_overlap(QRELS, "train", "validation") == ["q1"]
    assert split_overlap(QRELS, "dev", "test") == ["q9"]
    assert split_overlap(QRELS.filter(pl.col("split") != "test")) == []
