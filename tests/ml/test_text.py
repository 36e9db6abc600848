"""Passage text: one "title text" form, the same from a single row and from a corpus frame."""

from __future__ import annotations

import random

import polars as pl
import pytest

from jrr_pipeline.ml.sparse import corpus_texts
from jrr_pipeline.ml.text import WHITESPACE, passage_text, passage_texts, query_texts, text_by_id


def test_whitespace_is_exactly_what_str_strip_removes() -> None:
    assert "".join(c for c in map(chr, range(0x110000)) if c.isspace()) == WHITESPACE


def test_passage_text_joins_title_and_text() -> None:
    assert passage_text("Vitamin D", "reduces fractures") == "Vitamin D reduces fractures"
    assert passage_text(None, "cells divide") == "cells divide"
    assert passage_text("", "only text") == "only text"
    assert passage_text("  T ", " body\n") == "T   body"  # inner white space is kept
    assert passage_text("Title", None) == "Title"
    assert passage_text(None, None) == ""


def test_passage_texts_equals_passage_text_row_by_row() -> None:
    """Titles null / empty / white space only, texts with every white-space character at the
    ends (polars' default strip would keep \\x1c-\\x1f; str.strip removes them)."""
    rng = random.Random(0)
    pieces = ["", "a", "Title", "x y", "é", *WHITESPACE, "\x00", "-"]
    titles: list[str | None] = [None, "", " ", "\x1c", "\u3000T"]
    texts: list[str | None] = ["", " body ", "\x1fb\x1d", None]
    for _ in range(400):
        titles.append("".join(rng.choice(pieces) for _ in range(rng.randrange(4))))
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randrange(5))))
    n = min(len(titles), len(texts))
    corpus = pl.DataFrame({"doc_id": [str(i) for i in range(n)], "title": titles[:n],
                           "text": texts[:n]}, schema={"doc_id": pl.Utf8, "title": pl.Utf8,
                                                       "text": pl.Utf8})
    expected = [passage_text(t, x) for t, x in zip(titles[:n], texts[:n], strict=True)]
    assert passage_texts(corpus) == expected
    # what the three former copies gave for string cells: f"{title or ''} {text}".strip()
    assert expected == [f"{t or ''} {x or ''}".strip() for t, x in zip(titles[:n], texts[:n],
                                                                      strict=True)]


def test_passage_texts_without_title_column_and_all_null_titles() -> None:
    corpus = pl.DataFrame({"doc_id": ["a", "b"], "text": [" body a", "body b "]})
    assert passage_texts(corpus) == ["body a", "body b"]
    nulls = corpus.with_columns(title=pl.lit(None))
    assert passage_texts(nulls) == ["body a", "body b"]
    with pytest.raises(ValueError, match="missing column 'text'"):
        passage_texts(corpus.drop("text"))


def test_bm25_texts_are_passage_texts_with_titles_and_raw_text_without() -> None:
    corpus = pl.DataFrame({"doc_id": ["a", "b"], "title": ["T", None], "text": [" x ", " y "]})
    assert corpus_texts(corpus) == passage_texts(corpus) == ["T  x", "y"]
    assert corpus_texts(corpus, include_title=False) == [" x ", " y "]
    assert corpus_texts(corpus.drop("title")) == [" x ", " y "]


def test_query_texts_in_the_order_asked() -> None:
    queries = pl.DataFrame({"query_id": ["q1", "q2"], "text": ["one", "two"]})
    assert text_by_id(queries) == {"q1": "one", "q2": "two"}
    assert query_texts(queries, ["q2", "q1", "q2"]) == ["two", "one", "two"]
    with pytest.raises(KeyError):
        query_texts(queries, ["q3"])
