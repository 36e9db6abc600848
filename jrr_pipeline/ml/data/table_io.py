"""Column-mapped reading of one CSV, TSV or Parquet table into typed polars columns.

Each wanted column is a :class:`Spec`: our name, the user's column name, a kind that says
how to convert and check it, and whether the column may be absent. CSV errors carry the file
line of the record's first line (header = line 1); Parquet errors carry the 1-based row.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import polars as pl

from ..settings.base import shown
from .errors import DataFormatError
from .textio import (
    LINE,
    SPLIT_ALIASES,
    ChunkedColumns,
    decoded_lines,
    int_problem,
    normalize_split,
    parse_int,
    require_file,
)

Kind = Literal["id", "text", "title", "int", "split"]
_DTYPES: dict[str, pl.DataType] = {
    "id": pl.String, "text": pl.String, "title": pl.String, "int": pl.Int32, "split": pl.String,
}
_CSV_FIELD_LIMIT = 2**31 - 1  # passages can be longer than csv's default 128 KiB


class Spec(NamedTuple):
    """One wanted column: our name, the user's column, its kind, whether it may be absent, and
    the ``dataset.columns`` key that names it."""

    name: str
    column: str
    kind: Kind
    optional: bool = False
    role: str = ""


def read_table(path: Path, specs: list[Spec], progress: bool = False) -> pl.DataFrame:
    """Read ``path`` (.csv or .parquet) into our column names plus ``_line``.

    Absent optional columns are simply missing from the result; the caller fills defaults.
    """
    if path.suffix == ".parquet":
        return _read_parquet(path, specs)
    return _read_csv(path, specs, progress)


def read_header(path: Path, specs: list[Spec]) -> list[Spec]:
    """Check ``specs`` against the header of ``path`` only; returns the present ones."""
    if path.suffix == ".parquet":
        return _columns_present(path, list(_parquet_schema(path)), specs, None)
    reader = _csv_reader(path, progress=False)
    return _columns_present(path, _csv_header(reader, path), specs, 1)


def _convert_text(kind: Kind) -> Callable[[str], str | int | None]:
    if kind == "id":
        return lambda value: value.strip() or None
    if kind == "int":
        return parse_int
    if kind == "split":
        return normalize_split
    return lambda value: value


def _problem(kind: Kind, value: object) -> str:
    if kind == "id":
        return "empty id"
    if kind == "int":
        return int_problem(str(value))
    if kind == "split":
        return f"unknown split {shown(value)}; expected one of {sorted(SPLIT_ALIASES)}"
    return f"invalid value {shown(value)}"


def _columns_present(path: Path, header: list[str], specs: list[Spec], line: int | None):
    """Return the specs whose column is present, raising for a missing required one."""
    present = []
    for spec in specs:
        count = header.count(spec.column)
        if count > 1:
            raise DataFormatError(path, line, spec.column, "column appears more than once")
        if count == 0:
            if spec.optional:
                continue
            raise DataFormatError(path, line, spec.column, f"missing column, the file's header "
                                  f"has {_listed(header)}; map another one with --set "
                                  f"dataset.columns.{spec.role or spec.name}=COLUMN")
        present.append(spec)
    return present


def _next_record(reader, path: Path) -> tuple[int, list[str] | None]:
    """The next CSV record with the line it starts on; ``None`` at the end of the file."""
    start = reader.line_num + 1
    try:
        return start, next(reader)
    except StopIteration:
        return start, None
    except csv.Error as exc:
        raise DataFormatError(path, start, None, f"malformed CSV record: {exc}") from None


def _listed(header: list[str]) -> str:
    """The header's column names for a message, cut to a readable length."""
    return shown(", ".join(header)).strip("'\"")


def _csv_reader(path: Path, progress: bool):
    """A csv reader over ``path``'s decoded lines: comma separated with quotes, or for a .tsv
    file tab separated without quoting."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    lines = (text for _, text in decoded_lines(path, progress))
    if path.suffix == ".tsv":
        return csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    return csv.reader(lines, strict=True)


def _csv_header(reader, path: Path) -> list[str]:
    header = [name.strip() for name in _next_record(reader, path)[1] or []]
    if not any(header):
        raise DataFormatError(path, 1, None, "missing header line")
    return header


def _read_csv(path: Path, specs: list[Spec], progress: bool) -> pl.DataFrame:
    reader = _csv_reader(path, progress)
    header = _csv_header(reader, path)
    present = _columns_present(path, header, specs, 1)
    index = [header.index(spec.column) for spec in present]
    convert = [_convert_text(spec.kind) for spec in present]
    buf = ChunkedColumns({**{spec.name: _DTYPES[spec.kind] for spec in present}, "_line": LINE})
    targets = [buf.cols[spec.name].append for spec in present]
    add_line = buf.cols["_line"].append
    rows = 0
    blank_at = 0
    while True:
        start, record = _next_record(reader, path)
        if record is None:
            break
        if not record or (len(record) == 1 and not record[0].strip()):
            blank_at = blank_at or start
            continue
        if blank_at:
            raise DataFormatError(path, blank_at, None, "blank line inside the file")
        if len(record) != len(header):
            raise DataFormatError(
                path, start, None, f"expected {len(header)} columns, got {len(record)}"
            )
        for spec, i, conv, add in zip(present, index, convert, targets, strict=True):
            value = conv(record[i])
            if value is None:
                raise DataFormatError(path, start, spec.column, _problem(spec.kind, record[i]))
            add(value)
        add_line(start)
        rows += 1
        buf.maybe_flush()
    if not rows:
        raise DataFormatError(path, None, None, "file has a header but no rows")
    return buf.finish()


def _row_error(
    path: Path, frame: pl.DataFrame, bad: pl.Expr, column: str, problem: Callable[[object], str]
) -> None:
    """Raise at the first row where ``bad`` holds; ``problem`` maps the offending value to text."""
    hit = frame.with_row_index("_r").filter(bad).head(1)
    if hit.height:
        row = hit["_r"][0] + 1
        value = hit[column][0]
        raise DataFormatError(path, row, column, f"row {row}: {problem(value)}")


def _parquet_column(path: Path, frame: pl.DataFrame, spec: Spec) -> pl.Series:
    col = pl.col(spec.column)
    dtype = frame.schema[spec.column]
    if spec.kind == "title":
        if dtype == pl.Null:  # an all-null column written without a type
            return pl.Series(spec.column, [""] * frame.height, pl.String)
        if dtype != pl.String:
            raise DataFormatError(path, None, spec.column, f"must be a string column, got {dtype}")
        return frame[spec.column].fill_null("")
    _row_error(path, frame, col.is_null(), spec.column, lambda _: "missing value (null)")
    if spec.kind == "id":
        if dtype.is_integer():
            return frame[spec.column].cast(pl.String)
        if dtype != pl.String:
            raise DataFormatError(
                path, None, spec.column, f"ids must be strings or integers, got {dtype}"
            )
        _row_error(path, frame, col.str.strip_chars() == "", spec.column, lambda v: "empty id")
        return frame[spec.column].str.strip_chars()
    if spec.kind == "int":
        as_int = _parquet_ints(dtype, col)
        if as_int is None:
            raise DataFormatError(path, None, spec.column, f"must be integers, got {dtype}")
        _row_error(path, frame, as_int.is_null(), spec.column, lambda v: _problem("int", v))
        return frame.select(as_int.cast(pl.Int32))[spec.column]
    if dtype != pl.String:
        raise DataFormatError(path, None, spec.column, f"must be a string column, got {dtype}")
    if spec.kind == "split":
        split = col.str.strip_chars().str.to_lowercase().replace_strict(
            SPLIT_ALIASES, default=None, return_dtype=pl.String
        )
        _row_error(path, frame, split.is_null(), spec.column, lambda v: _problem("split", v))
        return frame.select(split)[spec.column]
    return frame[spec.column]


def _parquet_ints(dtype: pl.DataType, col: pl.Expr) -> pl.Expr | None:
    """An expression giving int32 relevance, null where a value is not an integer."""
    lo, hi = -(2**31), 2**31 - 1
    if dtype.is_integer():
        return pl.when(col.is_between(lo, hi)).then(col.cast(pl.Int64))
    if dtype.is_float():
        ok = col.is_finite() & (col.round(0) == col) & col.is_between(lo, hi)
        return pl.when(ok).then(col.cast(pl.Int64))
    if dtype == pl.String:
        parsed = col.str.strip_chars().cast(pl.Int64, strict=False)
        return pl.when(parsed.is_between(lo, hi)).then(parsed)
    return None


def _parquet_schema(path: Path) -> dict[str, pl.DataType]:
    require_file(path)
    try:
        return pl.read_parquet_schema(path)
    except Exception as exc:  # polars/arrow raise several types for a corrupt file
        raise DataFormatError(path, None, None, f"cannot read Parquet file: {exc}") from None


def _read_parquet(path: Path, specs: list[Spec]) -> pl.DataFrame:
    present = _columns_present(path, list(_parquet_schema(path)), specs, None)
    try:
        frame = pl.read_parquet(path, columns=list(dict.fromkeys(s.column for s in present)))
    except Exception as exc:  # polars/arrow raise several types for a corrupt file
        raise DataFormatError(path, None, None, f"cannot read Parquet file: {exc}") from None
    if frame.height == 0:
        raise DataFormatError(path, None, None, "file is empty (no rows)")
    columns = [_parquet_column(path, frame, spec).alias(spec.name) for spec in present]
    lines = pl.int_range(1, frame.height + 1, dtype=LINE, eager=True).alias("_line")
    return pl.DataFrame([*columns, lines])
