"""Format detection and the one entry point, :func:`load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from .beir import beir_files, read_beir
from .errors import DataFormatError
from .integrity import RawTables, check_qrels, check_split_leak, unique_ids
from .msmarco import msmarco_files, read_msmarco
from .tabular import ColumnMapping, check_tabular_headers, read_tabular, tabular_files
from .textio import not_a_file

Format = Literal["beir", "msmarco", "tabular"]
FORMATS: tuple[Format, ...] = ("beir", "msmarco", "tabular")
_MARKERS: dict[Format, tuple[str, ...]] = {
    "beir": ("corpus.jsonl",),
    "msmarco": ("collection.tsv",),
    "tabular": ("corpus.csv", "corpus.tsv", "corpus.parquet"),
}


@dataclass
class Dataset:
    """A loaded dataset: three frames in file order and the files they came from."""

    name: str
    corpus: pl.DataFrame  # doc_id String, title String ("" if none), text String
    queries: pl.DataFrame  # query_id String, text String
    qrels: pl.DataFrame  # query_id String, doc_id String, relevance Int32, split String
    source_files: list[Path]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, corpus={self.corpus.height} docs, "
            f"queries={self.queries.height}, qrels={self.qrels.height} rows, "
            f"files={len(self.source_files)})"
        )


def _existing_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataFormatError(path, None, None, f"data directory {what}")
    return path


def detect_format(data_dir: str | Path) -> Format:
    """Tell the layout of ``data_dir`` from its corpus file name.

    corpus.jsonl -> beir, collection.tsv -> msmarco, corpus.csv/.parquet -> tabular. Raises a
    DataFormatError if none or more than one layout is present.
    """
    path = _existing_dir(data_dir)
    found = [fmt for fmt, names in _MARKERS.items() if any((path / n).is_file() for n in names)]
    if len(found) == 1:
        return found[0]
    for marker in (path / n for names in _MARKERS.values() for n in names):
        if (marker.is_symlink() or marker.exists()) and not marker.is_file():
            raise DataFormatError(marker, None, None, f"corpus file {not_a_file(marker)}")
    if not found:
        problem = ("cannot detect the format: expected corpus.jsonl (BEIR), collection.tsv "
                   "(MS MARCO) or corpus.csv / .tsv / .parquet (tabular)")
    else:
        problem = f"ambiguous format ({' and '.join(found)} files present); pass fmt explicitly"
    raise DataFormatError(path, None, None, problem)


def _resolve(data_dir: str | Path, fmt: str) -> tuple[Path, Format]:
    path = _existing_dir(data_dir)
    key = fmt.lower()
    if key == "auto":
        return path, detect_format(path)
    if key not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; use 'auto' or one of {FORMATS}")
    return path, key  # type: ignore[return-value]


def dataset_files(data_dir: str | Path, fmt: str = "auto") -> list[Path]:
    """The files :func:`load_dataset` would read, in reading order, without parsing them.

    Raises a DataFormatError (line ``None``) for a missing directory or required file.
    """
    path, kind = _resolve(data_dir, fmt)
    listing = {"beir": beir_files, "msmarco": msmarco_files, "tabular": tabular_files}[kind]
    return listing(path)


def check_dataset(data_dir: str | Path, fmt: str = "auto",
                  columns: ColumnMapping | None = None) -> list[Path]:
    """What can be checked without reading rows: the layout, the files and, for the tabular
    layout, the column mapping against each file's header. Returns :func:`dataset_files`."""
    path, kind = _resolve(data_dir, fmt)
    _mapping_applies(path, kind, columns)
    if kind == "tabular":
        check_tabular_headers(path, columns)
    return dataset_files(path, kind)


def _mapping_applies(path: Path, kind: Format, columns: ColumnMapping | None) -> None:
    if columns is not None and kind != "tabular":
        raise DataFormatError(path, None, None, f"dataset.columns maps CSV / TSV / Parquet "
                              f"columns, but this directory has the {kind} layout (fixed names)")


def load_dataset(
    data_dir: str | Path,
    fmt: str = "auto",
    name: str | None = None,
    columns: ColumnMapping | None = None,
    progress: bool = False,
) -> Dataset:
    """Read and validate a dataset directory (BEIR, MS MARCO style or tabular).

    Args:
        data_dir: the directory holding the files.
        fmt: "auto" (see :func:`detect_format`), "beir", "msmarco" or "tabular".
        name: the dataset's name; defaults to the directory's name.
        columns: column names for the tabular format (ignored by the others).
        progress: show tqdm progress bars while reading.

    Raises:
        DataFormatError: for any bad input, naming the file, line and field.
    """
    path, kind = _resolve(data_dir, fmt)
    _mapping_applies(path, kind, columns)
    if kind == "beir":
        raw = read_beir(path, progress)
    elif kind == "msmarco":
        raw = read_msmarco(path, progress)
    else:
        raw = read_tabular(path, columns, progress)
    return _finish(raw, name or path.resolve().name)


def _finish(raw: RawTables, name: str) -> Dataset:
    fields, files = raw.fields, raw.files
    corpus = unique_ids(raw.corpus, "doc_id", fields.doc_id, files)
    queries = unique_ids(raw.queries, "query_id", fields.query_id, files, text_col="text")
    qrels = check_qrels(raw.qrels, corpus, queries, fields, files)
    check_split_leak(qrels, fields, files)
    string = pl.String
    return Dataset(
        name=name,
        corpus=corpus.select(
            pl.col("doc_id").cast(string), pl.col("title").cast(string), pl.col("text").cast(string)
        ),
        queries=queries.select(pl.col("query_id").cast(string), pl.col("text").cast(string)),
        qrels=qrels.select(
            pl.col("query_id").cast(string),
            pl.col("doc_id").cast(string),
            pl.col("relevance").cast(pl.Int32),
            pl.col("split").cast(string),
        ),
        source_files=files,
    )
