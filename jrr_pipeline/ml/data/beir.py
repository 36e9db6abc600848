"""BEIR layout: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ..settings.base import shown
from .errors import DataFormatError
from .integrity import FieldNames, RawTables
from .textio import (
    LINE,
    SRC,
    ChunkedColumns,
    content_lines,
    normalize_split,
    require_file,
    split_rank,
)
from .tsv import read_qrels

FIELDS = FieldNames(
    doc_id="_id", query_id="_id", query_text="text",
    qrels_query_id="query-id", qrels_doc_id="corpus-id", relevance="score",
)
_DECODER = json.JSONDecoder()


def qrels_files(data_dir: Path) -> list[tuple[Path, str]]:
    """The ``qrels/*.tsv`` files with their normalised split, in train/dev/test order."""
    qdir = data_dir / "qrels"
    if not qdir.is_dir():
        raise DataFormatError(qdir, None, None, "required directory does not exist")
    found = []
    for path in sorted(qdir.glob("*.tsv")):
        split = normalize_split(path.stem)
        if split is None:
            raise DataFormatError(
                path, None, None,
                f"unknown split {shown(path.stem)}; name qrels files train, dev (or validation), "
                f"test",
            )
        found.append((path, split))
    if not found:
        raise DataFormatError(qdir, None, None, "no qrels files (expected train/dev/test.tsv)")
    return sorted(found, key=lambda item: (split_rank(item[1]), item[0].name))


def beir_files(data_dir: Path) -> list[Path]:
    """Every file :func:`read_beir` reads, in reading order; nothing is parsed."""
    corpus = require_file(data_dir / "corpus.jsonl")
    queries = require_file(data_dir / "queries.jsonl")
    return [corpus, queries, *(path for path, _ in qrels_files(data_dir))]


def _json_id(obj: dict, path: Path, number: int) -> str:
    if "_id" not in obj:
        raise DataFormatError(path, number, "_id", "missing field")
    value = obj["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataFormatError(path, number, "_id", f"id must be a string or integer, got {shown(value)}")
    text = str(value).strip()
    if not text:
        raise DataFormatError(path, number, "_id", "empty id")
    return text


def _json_text(obj: dict, key: str, path: Path, number: int, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            problem = "missing field" if key not in obj else "must be a string, got null"
            raise DataFormatError(path, number, key, problem)
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, number, key, f"must be a string, got {type(value).__name__}")
    return value


def _json_lines_hint(line: str) -> str:
    """A hint when a line looks like part of a pretty-printed JSON file, not JSON lines."""
    start = line.lstrip()[:1]
    if start == "[":
        return ("; the file holds a JSON array, but JSON lines are expected (one object per "
                "line: jq -c '.[]' in.json > out.jsonl)")
    if line.strip() in ("{", "}") or start in ('"', "}"):
        return ("; this looks like pretty-printed JSON, but JSON lines are expected (one object "
                "per line: jq -c . in.json > out.jsonl)")
    return ""


def _check_unicode(obj: dict, keys: tuple[str, ...], path: Path, number: int) -> None:
    """Raise at a text field holding a lone surrogate (valid JSON, but not valid Unicode)."""
    for key in keys:
        value = obj.get(key)
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataFormatError(
                path, number, key,
                f"lone surrogate \\u{ord(value[exc.start]):04x} at character {exc.start + 1}: "
                f"a \\u escape of half a UTF-16 pair is not valid Unicode") from None


def read_jsonl(path: Path, id_column: str, with_title: bool, progress: bool = False) -> pl.DataFrame:
    """Read BEIR JSON lines into ``[id_column, (title,) text, _line]``; extra keys are ignored."""
    schema = {id_column: pl.String}
    if with_title:
        schema["title"] = pl.String
    schema |= {"text": pl.String, "_line": LINE}
    buf = ChunkedColumns(schema)
    add_id, add_text, add_line = (buf.cols[c].append for c in (id_column, "text", "_line"))
    add_title = buf.cols["title"].append if with_title else None
    decode = _DECODER.decode
    for number, line in content_lines(path, progress):
        try:
            obj = decode(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, number, None, f"malformed JSON: {exc.msg} (column "
                                  f"{exc.colno}){_json_lines_hint(line)}") from None
        if type(obj) is not dict:
            hint = _json_lines_hint(line) if type(obj) is list else ""
            raise DataFormatError(path, number, None, f"expected a JSON object, got "
                                  f"{shown(line)}{hint}")
        if "\\u" in line:  # a JSON escape may encode half a UTF-16 pair
            _check_unicode(obj, ("_id", "title", "text"), path, number)
        # common case inline (string fields); anything else goes through the checking helpers
        doc_id, text = obj.get("_id"), obj.get("text")
        if type(doc_id) is not str or not doc_id or doc_id[0].isspace() or doc_id[-1].isspace():
            doc_id = _json_id(obj, path, number)
        add_id(doc_id)
        if add_title is not None:
            title = obj.get("title")
            add_title(title if type(title) is str else _json_text(obj, "title", path, number, False))
        add_text(text if type(text) is str else _json_text(obj, "text", path, number, True))
        add_line(number)
        buf.maybe_flush()
    return buf.finish()


def read_beir(data_dir: Path, progress: bool = False) -> RawTables:
    """Read a BEIR directory into frames with ``_src``/``_line`` columns (see RawTables)."""
    files = beir_files(data_dir)
    corpus = read_jsonl(files[0], "doc_id", with_title=True, progress=progress)
    queries = read_jsonl(files[1], "query_id", with_title=False, progress=progress)
    parts = []
    for src, (path, split) in enumerate(qrels_files(data_dir), start=2):
        frame = read_qrels(path, ("query-id", "corpus-id", "score"), progress)
        parts.append(frame.with_columns(pl.lit(split).alias("split"), pl.lit(src, SRC).alias("_src")))
    return RawTables(
        files=files,
        corpus=corpus.with_columns(pl.lit(0, SRC).alias("_src")),
        queries=queries.with_columns(pl.lit(1, SRC).alias("_src")),
        qrels=pl.concat(parts, how="vertical"),
        fields=FIELDS,
    )
