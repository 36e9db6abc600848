"""Tab-separated readers shared by the BEIR and MS MARCO formats."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from .errors import DataFormatError
from .textio import BOM, LINE, ChunkedColumns, content_lines, int_problem, parse_int

_BLOCK = 1 << 24  # bytes per read when counting lines and tabs
# a first line is a header if its relevance is not a number and it names these columns
_HEADER_LAST = {"score", "relevance", "rel", "label", "grade"}
_HEADER_FIRST = {"query-id", "query_id", "queryid", "qid", "query", "topic"}


def read_id_text(
    path: Path, id_field: str, text_field: str, id_column: str, progress: bool = False
) -> pl.DataFrame:
    """Read a headerless ``id<TAB>text`` file into ``[id_column, text, _line]``.

    A clean file (one tab per line, LF endings, no BOM, no blank or empty fields) is read by
    polars; anything else goes through the exact line-by-line reader, which either locates the
    problem or handles the tolerated quirks (CRLF, BOM, trailing blank lines, empty texts).
    """
    fast = _fast_id_text(path, id_column, progress)
    return fast if fast is not None else _exact_id_text(path, id_field, text_field, id_column,
                                                        progress)


def _byte_counts(path: Path, progress: bool) -> tuple[int, int, bool] | None:
    """Count lines and tabs of a file in one pass: ``(lines, tabs, clean)``.

    ``clean`` is false if the file has a BOM or any carriage return. ``None`` for an empty or
    missing file.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    newlines = tabs = 0
    clean = True
    last = b""
    with (
        open(path, "rb") as fh,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
             disable=not progress, leave=False) as bar,
    ):
        clean = not fh.read(len(BOM)).startswith(BOM)
        fh.seek(0)
        while block := fh.read(_BLOCK):
            newlines += block.count(b"\n")
            tabs += block.count(b"\t")
            clean = clean and b"\r" not in block
            last = block[-1:]
            bar.update(len(block))
    return newlines + (0 if last == b"\n" else 1), tabs, clean


def _fast_id_text(path: Path, id_column: str, progress: bool) -> pl.DataFrame | None:
    counts = _byte_counts(path, progress)
    if counts is None:
        return None
    lines, tabs, clean = counts
    if not clean or tabs != lines:
        return None
    try:
        frame = pl.read_csv(
            path, separator="\t", has_header=False, quote_char=None,
            schema={id_column: pl.String, "text": pl.String},
        )
    except Exception:  # any parse problem: the exact reader will name it
        return None
    if frame.height != lines or frame.null_count().sum_horizontal().item():
        return None
    frame = frame.with_columns(pl.col(id_column).str.strip_chars())
    if (frame[id_column] == "").any():
        return None
    return frame.with_columns(pl.int_range(1, lines + 1, dtype=LINE).alias("_line"))


def _exact_id_text(
    path: Path, id_field: str, text_field: str, id_column: str, progress: bool
) -> pl.DataFrame:
    buf = ChunkedColumns({id_column: pl.String, "text": pl.String, "_line": LINE})
    add_id, add_text, add_line = (buf.cols[c].append for c in (id_column, "text", "_line"))
    for number, line in content_lines(path, progress):
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataFormatError(
                path, number, None,
                f"expected 2 tab-separated columns ({id_field}, {text_field}), got {len(parts)}",
            )
        doc_id = parts[0].strip()
        if not doc_id:
            raise DataFormatError(path, number, id_field, "empty id")
        add_id(doc_id)
        add_text(parts[1])
        add_line(number)
        buf.maybe_flush()
    return buf.finish()


def _split_qrels_row(line: str, trec: bool) -> list[str] | None:
    """``[query, doc, relevance]`` of a 3-column tab row or, when ``trec``, of a TREC row
    (``query iteration doc relevance``, tab or space separated)."""
    parts = line.split("\t")
    if len(parts) == 3:
        return parts
    if not trec:
        return None
    if len(parts) != 4:
        parts = line.split()
    return [parts[0], parts[2], parts[3]] if len(parts) == 4 else None


def _qrels_shape(fields: tuple[str, str, str], trec: bool) -> str:
    q_field, d_field, r_field = fields
    plain = f"3 tab-separated columns ({q_field}, {d_field}, {r_field})"
    return f"{plain} or 4 TREC columns (query, iteration, doc, relevance)" if trec else plain


def read_qrels(
    path: Path, fields: tuple[str, str, str], progress: bool = False, trec: bool = False
) -> pl.DataFrame:
    """Read a qrels file into ``[query_id, doc_id, relevance, _line]``.

    Rows are ``query<TAB>doc<TAB>relevance`` or, when ``trec`` (MS MARCO), TREC ``query 0 doc
    relevance`` (tab or space separated), one form per file; an optional header line is
    recognised by its last column name (score, relevance, ...). ``fields`` are the file's names
    for (query, doc, relevance) used in errors.
    """
    q_field, d_field, r_field = fields
    buf = ChunkedColumns(
        {"query_id": pl.String, "doc_id": pl.String, "relevance": pl.Int32, "_line": LINE}
    )
    add_q, add_d, add_r, add_line = (
        buf.cols[c].append for c in ("query_id", "doc_id", "relevance", "_line")
    )
    rows = 0
    first = True
    form: tuple[int, int] | None = None  # (columns, line) of the first row: one form per file
    for number, line in content_lines(path, progress):
        parts = _split_qrels_row(line, trec)
        tabbed = line.count("\t") + 1
        columns = tabbed if tabbed > 1 else len(line.split())
        if parts is None:
            got = f"{tabbed} tab-separated" if tabbed > 1 else f"{columns} space-separated"
            raise DataFormatError(path, number, None, f"expected "
                                  f"{_qrels_shape(fields, trec)}, got {got}")
        query_id, doc_id, rel_text = (p.strip() for p in parts)
        relevance = parse_int(rel_text)
        is_header = first and relevance is None and (
            rel_text.lower() in _HEADER_LAST or query_id.lower() in _HEADER_FIRST
        )
        first = False
        if is_header:
            continue
        form = form or (columns, number)
        if columns != form[0]:
            raise DataFormatError(path, number, None, f"{columns} columns, but line {form[1]} "
                                  f"has {form[0]}: one qrels form per file")
        if relevance is None:
            raise DataFormatError(path, number, r_field, int_problem(rel_text))
        if not query_id:
            raise DataFormatError(path, number, q_field, "empty id")
        if not doc_id:
            raise DataFormatError(path, number, d_field, "empty id")
        add_q(query_id)
        add_d(doc_id)
        add_r(relevance)
        add_line(number)
        rows += 1
        buf.maybe_flush()
    if rows == 0:
        raise DataFormatError(path, None, None, "file has a header but no rows")
    return buf.finish()

