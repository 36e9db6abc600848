"""Tabular layout: corpus, queries and qrels as CSV, TSV or Parquet with user-named columns.

Qrels are either one ``qrels.{csv,tsv,parquet}`` (split from a column, or all "test" when the
column is absent) or one file per split under ``qrels/`` (split from the file name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..settings.base import shown
from .errors import DataFormatError
from .integrity import FieldNames, RawTables
from .table_io import Spec, read_header, read_table
from .textio import SRC, normalize_split, split_rank

SUFFIXES = (".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class ColumnMapping:
    """Maps our column names to the user's column names in CSV/Parquet files.

    ``title`` may be ``None`` (no titles); a missing column named by the default "title" also
    means no titles. ``split`` is the split column of a single qrels file; if it is ``None`` or
    absent from the file every row is "test". Per-split qrels files take the split from the name.
    """

    doc_id: str = "doc_id"
    title: str | None = "title"
    text: str = "text"
    query_id: str = "query_id"
    query_text: str = "text"
    qrels_query_id: str = "query_id"
    qrels_doc_id: str = "doc_id"
    relevance: str = "relevance"
    split: str | None = "split"

    @classmethod
    def from_settings(cls, columns: dict[str, str]) -> ColumnMapping:
        """The mapping of ``dataset.columns`` (field -> column; '' = no title / split column)."""
        return cls(**{role: column or None for role, column in columns.items()})


COLUMN_ROLES = tuple(f.name for f in dataclasses.fields(ColumnMapping))
OPTIONAL_ROLES = ("title", "split")


def _one_of(data_dir: Path, stem: str, required: bool = True) -> Path | None:
    found = [data_dir / f"{stem}{suffix}" for suffix in SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise DataFormatError(found[1], None, None, f"ambiguous: both {found[0].name} and "
                              f"{found[1].name} exist; keep one")
    if not found and required:
        raise DataFormatError(data_dir / f"{stem}.csv", None, None,
                              f"required file does not exist (nor {stem}.tsv, {stem}.parquet)")
    return found[0] if found else None


def qrels_files(data_dir: Path) -> list[tuple[Path, str | None]]:
    """The qrels files with their split (``None``: taken from the split column)."""
    single = _one_of(data_dir, "qrels", required=False)
    qdir = data_dir / "qrels"
    per_split = sorted(p for p in qdir.glob("*") if p.suffix in SUFFIXES) if qdir.is_dir() else []
    if single and per_split:
        raise DataFormatError(qdir, None, None, f"ambiguous: both {single.name} and qrels/ exist")
    if single:
        return [(single, None)]
    found = []
    for path in per_split:
        split = normalize_split(path.stem)
        if split is None:
            raise DataFormatError(path, None, None, f"unknown split {shown(path.stem)}; name files "
                                  "qrels/<train|dev|test>.csv, .tsv or .parquet")
        found.append((path, split))
    if not found:
        raise DataFormatError(data_dir / "qrels.csv", None, None, "required file does not exist "
                              "(nor qrels.tsv / .parquet, nor qrels/<split>.csv / .tsv / .parquet)")
    return sorted(found, key=lambda item: (split_rank(item[1]), item[0].name))


def tabular_files(data_dir: Path) -> list[Path]:
    """Every file :func:`read_tabular` reads, in reading order; nothing is parsed."""
    corpus = _one_of(data_dir, "corpus")
    queries = _one_of(data_dir, "queries")
    return [corpus, queries, *(path for path, _ in qrels_files(data_dir))]


def file_specs(m: ColumnMapping, split: str | None = None) -> dict[str, list[Spec]]:
    """The columns wanted from the corpus, the queries and a qrels file (``split`` None: one
    qrels file for every split, which may hold a split column)."""
    corpus = [Spec("doc_id", m.doc_id, "id", role="doc_id"),
              Spec("text", m.text, "text", role="text")]
    if m.title is not None:
        corpus.append(Spec("title", m.title, "title", optional=m.title == "title", role="title"))
    qrels = [Spec("query_id", m.qrels_query_id, "id", role="qrels_query_id"),
             Spec("doc_id", m.qrels_doc_id, "id", role="qrels_doc_id"),
             Spec("relevance", m.relevance, "int", role="relevance")]
    if split is None and m.split is not None:
        qrels.append(Spec("split", m.split, "split", optional=True, role="split"))
    return {"corpus": corpus, "qrels": qrels,
            "queries": [Spec("query_id", m.query_id, "id", role="query_id"),
                        Spec("text", m.query_text, "text", role="query_text")]}


def check_tabular_headers(data_dir: Path, columns: ColumnMapping | None = None) -> None:
    """Check the column mapping against every file's header (CSV / TSV first line, Parquet
    schema) without reading rows: a missing column fails before any work starts."""
    m = columns or ColumnMapping()
    files = tabular_files(data_dir)
    read_header(files[0], file_specs(m)["corpus"])
    read_header(files[1], file_specs(m)["queries"])
    for path, split in qrels_files(data_dir):
        read_header(path, file_specs(m, split)["qrels"])


def read_tabular(
    data_dir: Path, columns: ColumnMapping | None = None, progress: bool = False
) -> RawTables:
    """Read a tabular directory into frames with ``_src``/``_line`` columns."""
    m = columns or ColumnMapping()
    files = tabular_files(data_dir)
    corpus = read_table(files[0], file_specs(m)["corpus"], progress)
    if "title" not in corpus.columns:
        corpus = corpus.with_columns(pl.lit("").alias("title"))
    queries = read_table(files[1], file_specs(m)["queries"], progress)
    parts = []
    for src, (path, split) in enumerate(qrels_files(data_dir), start=2):
        frame = read_table(path, file_specs(m, split)["qrels"], progress)
        if "split" not in frame.columns:
            frame = frame.with_columns(pl.lit(split or "test").alias("split"))
        parts.append(frame.with_columns(pl.lit(src, SRC).alias("_src")))
    return RawTables(
        files=files,
        corpus=corpus.select("doc_id", "title", "text", "_line").with_columns(
            pl.lit(0, SRC).alias("_src")
        ),
        queries=queries.with_columns(pl.lit(1, SRC).alias("_src")),
        qrels=pl.concat([p.select(_QRELS_ORDER) for p in parts], how="vertical"),
        fields=FieldNames(
            doc_id=m.doc_id, query_id=m.query_id, query_text=m.query_text,
            qrels_query_id=m.qrels_query_id, qrels_doc_id=m.qrels_doc_id, relevance=m.relevance,
        ),
    )


_QRELS_ORDER = ["query_id", "doc_id", "relevance", "split", "_src", "_line"]
