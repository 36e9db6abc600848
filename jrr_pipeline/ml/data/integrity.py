"""Cross-row and cross-file checks run by the loader before it hands frames out.

Readers produce frames carrying two internal columns, ``_src`` (index into the list of files
read) and ``_line`` (1-based line, or row for Parquet), so these vectorised checks can still
name the exact file and line of a problem. The checks cost one hash pass per table when the
data are clean; the slower locating work runs only when something is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..settings.base import shown
from .errors import DataFormatError


@dataclass(frozen=True)
class FieldNames:
    """The file format's own names for our fields, used in error messages."""

    doc_id: str
    query_id: str
    query_text: str
    qrels_query_id: str
    qrels_doc_id: str
    relevance: str


@dataclass
class RawTables:
    """What a reader returns: frames with ``_src``/``_line`` columns and the files behind them."""

    files: list[Path]
    corpus: pl.DataFrame  # doc_id, title, text, _src, _line
    queries: pl.DataFrame  # query_id, text, _src, _line
    qrels: pl.DataFrame  # query_id, doc_id, relevance, split, _src, _line
    fields: FieldNames


def where(files: list[Path], src: int, line: int) -> str:
    """Describe a location for a message: ``line 4``, ``row 4`` or ``other.tsv:4``."""
    path = files[src]
    return f"row {line}" if path.suffix == ".parquet" else f"line {line}"


def located_error(
    files: list[Path], src: int, line: int, field: str | None, problem: str
) -> DataFormatError:
    """Build an error at ``files[src]:line``; Parquet locations say "row" in the problem."""
    path = files[src]
    if path.suffix == ".parquet":
        problem = f"row {line}: {problem}"
    return DataFormatError(path, line, field, problem)


def _first_seen(files: list[Path], src: int, here_src: int, line: int) -> str:
    if src == here_src:
        return where(files, src, line)
    return f"{files[src].name}:{line}"


def unique_ids(
    df: pl.DataFrame,
    id_col: str,
    field: str,
    files: list[Path],
    text_col: str | None = None,
) -> pl.DataFrame:
    """Return ``df`` with unique ``id_col`` values or raise on the first bad repeat.

    A repeat inside one file is always an error. With ``text_col`` given, a repeat in a later
    file with the same text is allowed and dropped (MS MARCO query files overlap); a different
    text is an error.
    """
    if df.height == 0 or df[id_col].n_unique() == df.height:
        return df
    key = pl.col(id_col)
    dups = df.filter(key.is_duplicated()).with_columns(
        pl.int_range(pl.len()).over(id_col).alias("_k"),
        pl.int_range(pl.len()).over([id_col, "_src"]).alias("_kf"),
        pl.col("_line").first().over([id_col, "_src"]).alias("_fline_same"),
        pl.col("_src").first().over(id_col).alias("_fsrc"),
        pl.col("_line").first().over(id_col).alias("_fline"),
    )
    if text_col is None:
        bad = dups.filter(pl.col("_k") > 0)
    else:
        dups = dups.with_columns(pl.col(text_col).first().over(id_col).alias("_ftext"))
        bad = dups.filter(
            (pl.col("_kf") > 0) | ((pl.col("_k") > 0) & (pl.col(text_col) != pl.col("_ftext")))
        )
    if bad.height:
        row = bad.row(0, named=True)
        if row["_kf"] > 0:
            first = where(files, row["_src"], row["_fline_same"])
            problem = f"duplicate id {shown(row[id_col])} (first seen at {first})"
        else:
            first = _first_seen(files, row["_fsrc"], row["_src"], row["_fline"])
            problem = (f"duplicate id {shown(row[id_col])} with a different text (first seen at "
                       f"{first})")
        raise located_error(files, row["_src"], row["_line"], field, problem)
    return df.filter(key.is_first_distinct())


def check_qrels(
    qrels: pl.DataFrame,
    corpus: pl.DataFrame,
    queries: pl.DataFrame,
    fields: FieldNames,
    files: list[Path],
) -> pl.DataFrame:
    """Check that every qrels row names a known query and doc and that no pair conflicts.

    Identical repeats of a (query, doc, split) row are dropped; repeats with a different
    relevance are an error.
    """
    unknown = qrels.filter(
        ~pl.col("query_id").is_in(queries["query_id"].implode())
        | ~pl.col("doc_id").is_in(corpus["doc_id"].implode())
    )
    if unknown.height:
        row = unknown.row(0, named=True)
        known_query = queries["query_id"].eq(row["query_id"]).any()
        if not known_query:
            field = fields.qrels_query_id
            problem = f"unknown query id {shown(row['query_id'])} (not among the queries)"
        else:
            field = fields.qrels_doc_id
            problem = f"unknown doc id {shown(row['doc_id'])} (not in the corpus)"
        raise located_error(files, row["_src"], row["_line"], field, problem)

    keys = ["query_id", "doc_id", "split"]
    pair = pl.struct(keys)
    if qrels.select(pair.is_unique().all()).item():
        return qrels
    conflicts = qrels.filter(pair.is_duplicated()).with_columns(
        pl.col("relevance").first().over(keys).alias("_frel"),
        pl.col("_src").first().over(keys).alias("_fsrc"),
        pl.col("_line").first().over(keys).alias("_fline"),
    ).filter(pl.col("relevance") != pl.col("_frel"))
    if conflicts.height:
        row = conflicts.row(0, named=True)
        first = _first_seen(files, row["_fsrc"], row["_src"], row["_fline"])
        raise located_error(
            files, row["_src"], row["_line"], fields.relevance,
            f"conflicting relevance {row['relevance']} for query {shown(row['query_id'])} and doc "
            f"{shown(row['doc_id'])} in split {row['split']!r} ({row['_frel']} at {first})",
        )
    return qrels.filter(pair.is_first_distinct())


def check_split_leak(qrels: pl.DataFrame, fields: FieldNames, files: list[Path]) -> None:
    """Raise at the first test row whose query also has train or dev qrels: the models would be
    trained (or selected) on a query they are then tested on."""
    seen = qrels.filter(pl.col("split") != "test").group_by("query_id", maintain_order=True).agg(
        pl.col("split").first().alias("_fsplit"), pl.col("_src").first().alias("_fsrc"),
        pl.col("_line").first().alias("_fline"))
    leaked = qrels.filter(pl.col("split") == "test").join(seen, on="query_id")
    if leaked.height == 0:
        return
    row = leaked.sort("_src", "_line").row(0, named=True)
    first = _first_seen(files, row["_fsrc"], row["_src"], row["_fline"])
    raise located_error(
        files, row["_src"], row["_line"], fields.qrels_query_id,
        f"query {shown(row['query_id'])} is in the test split and in {row['_fsplit']} (at "
        f"{first}): a query may be in train or dev, or in test, never both")
