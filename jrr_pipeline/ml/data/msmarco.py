"""MS MARCO style: collection.tsv, queries.<split>[.x].tsv, qrels.<split>[.x].tsv.

The split is the name's middle part (``qrels.dev.small.tsv`` -> dev); a bare ``qrels.tsv`` is
taken as test. Every queries file is read (a query id may repeat across files with the same
text); qrels files must name train, dev (validation, val) or test.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..settings.base import shown
from .errors import DataFormatError
from .integrity import FieldNames, RawTables
from .textio import SRC, normalize_split, require_file, split_rank
from .tsv import read_id_text, read_qrels

FIELDS = FieldNames(
    doc_id="pid", query_id="qid", query_text="text",
    qrels_query_id="qid", qrels_doc_id="pid", relevance="rel",
)


def _middle(path: Path) -> str | None:
    parts = path.name.split(".")
    return parts[1] if len(parts) > 2 else None


def _sorted_by_split(paths: list[Path]) -> list[Path]:
    def key(path: Path) -> tuple[int, str]:
        split = normalize_split(_middle(path) or "test")
        return (split_rank(split), path.name)

    return sorted(paths, key=key)


def query_files(data_dir: Path) -> list[Path]:
    """The queries files in train/dev/test/other order."""
    paths = [p for p in data_dir.glob("queries*.tsv") if p.name.startswith("queries.")]
    if not paths:
        raise DataFormatError(data_dir / "queries.train.tsv", None, None,
                              "required file does not exist (no queries.*.tsv found)")
    return _sorted_by_split(paths)


def qrels_files(data_dir: Path) -> list[tuple[Path, str]]:
    """The qrels files with their normalised split, in train/dev/test order."""
    found = []
    for path in _sorted_by_split([p for p in data_dir.glob("qrels*.tsv")
                                  if p.name.startswith("qrels.")]):
        middle = _middle(path)
        split = "test" if middle is None else normalize_split(middle)
        if split is None:
            raise DataFormatError(
                path, None, None,
                f"unknown split {shown(middle)}; name qrels files qrels.<train|dev|test>[...].tsv",
            )
        found.append((path, split))
    if not found:
        raise DataFormatError(data_dir / "qrels.train.tsv", None, None,
                              "required file does not exist (no qrels.*.tsv found)")
    return found


def msmarco_files(data_dir: Path) -> list[Path]:
    """Every file :func:`read_msmarco` reads, in reading order; nothing is parsed."""
    collection = require_file(data_dir / "collection.tsv")
    return [collection, *query_files(data_dir), *(p for p, _ in qrels_files(data_dir))]


def read_msmarco(data_dir: Path, progress: bool = False) -> RawTables:
    """Read an MS MARCO style directory into frames with ``_src``/``_line`` columns."""
    files = msmarco_files(data_dir)
    corpus = read_id_text(files[0], "pid", "text", "doc_id", progress).with_columns(
        pl.lit("").alias("title"), pl.lit(0, SRC).alias("_src")
    )
    src = 1
    query_parts = []
    for path in query_files(data_dir):
        frame = read_id_text(path, "qid", "text", "query_id", progress)
        query_parts.append(frame.with_columns(pl.lit(src, SRC).alias("_src")))
        src += 1
    qrels_parts = []
    for path, split in qrels_files(data_dir):
        frame = read_qrels(path, ("qid", "pid", "rel"), progress, trec=True)
        qrels_parts.append(
            frame.with_columns(pl.lit(split).alias("split"), pl.lit(src, SRC).alias("_src"))
        )
        src += 1
    return RawTables(
        files=files,
        corpus=corpus.select("doc_id", "title", "text", "_src", "_line"),
        queries=pl.concat(query_parts, how="vertical"),
        qrels=pl.concat(qrels_parts, how="vertical"),
        fields=FIELDS,
    )
