"""Pure checks on stored tables (used by the Dagster asset checks).

Each returns the offending ids as a list of strings, in order of first appearance, without
repeats; an empty result means the check passed.
"""

from __future__ import annotations

import polars as pl

from .textio import normalize_split


def _ids(series: pl.Series) -> list[str]:
    return series.unique(maintain_order=True).cast(pl.String).to_list()


def duplicate_ids(df: pl.DataFrame, column: str) -> list[str]:
    """Ids that occur more than once in ``df[column]``."""
    col = df[column]
    return _ids(col.filter(col.is_duplicated()))


def empty_texts(df: pl.DataFrame, id_column: str, text_column: str = "text") -> list[str]:
    """Ids whose text is null, empty or only whitespace."""
    text = pl.col(text_column)
    empty = text.is_null() | (text.str.strip_chars() == "")
    return _ids(df.filter(empty)[id_column])


def unresolved_qrels(
    qrels: pl.DataFrame, corpus: pl.DataFrame, queries: pl.DataFrame
) -> dict[str, list[str]]:
    """Qrels ids missing from the corpus (``"doc_id"``) and from the queries (``"query_id"``)."""
    docs = qrels["doc_id"].filter(~qrels["doc_id"].is_in(corpus["doc_id"].implode()))
    qids = qrels["query_id"].filter(~qrels["query_id"].is_in(queries["query_id"].implode()))
    return {"doc_id": _ids(docs), "query_id": _ids(qids)}


def split_overlap(qrels: pl.DataFrame, a: str = "train", b: str = "test") -> list[str]:
    """Query ids that have qrels in both split ``a`` and split ``b`` (aliases like "val" allowed)."""
    a, b = normalize_split(a) or a, normalize_split(b) or b
    in_a = qrels.filter(pl.col("split") == a)["query_id"]
    in_b = qrels.filter(pl.col("split") == b)["query_id"]
    return _ids(in_a.filter(in_a.is_in(in_b.implode())))
