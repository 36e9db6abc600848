"""BEIR reader: a valid directory loads exactly; each kind of bad input names file/line/field."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from jrr_pipeline.ml.data import load_dataset

from .conftest import CORPUS, QUERIES, jsonl, write


def test_loads_frames_with_exact_dtypes_and_values(beir_dir: Path) -> None:
    ds = load_dataset(beir_dir)
    assert ds.name == "tinybeir"
    assert ds.corpus.schema == pl.Schema({"doc_id": pl.String, "title": pl.String, "text": pl.String})
    assert ds.queries.schema == pl.Schema({"query_id": pl.String, "text": pl.String})
    assert ds.qrels.schema == pl.Schema(
        {"query_id": pl.String, "doc_id": pl.String, "relevance": pl.Int32, "split": pl.String}
    )
    assert ds.corpus.rows() == [
        ("d1", "Café culture", "Espresso in Zürich — naïve façade ☕"),
        ("2", "", "A doc with an integer id and no title"),
        ("d3", "", "Third doc, null title"),
        ("d4", "Graphs", "日本語のテキスト"),
    ]
    assert ds.queries["query_id"].to_list() == ["q1", "7", "q3", "q4"]
    # train, then dev (from validation.tsv), then test; graded and zero relevance kept
    assert ds.qrels.rows() == [
        ("q4", "d1", 2, "train"),
        ("q4", "2", 0, "train"),
        ("7", "d3", 1, "dev"),
        ("q3", "d4", 1, "test"),
        ("q1", "d4", 1, "test"),
    ]
    names = [p.relative_to(beir_dir).as_posix() for p in ds.source_files]
    assert names == [
        "corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/validation.tsv", "qrels/test.tsv"
    ]


def test_bom_crlf_trailing_blank_lines_and_headerless_qrels(tmp_path: Path) -> None:
    root = tmp_path / "crlf"
    corpus = jsonl(CORPUS).replace("\n", "\r\n") + "\r\n\n  \n"
    write(root / "corpus.jsonl", b"\xef\xbb\xbf" + corpus.encode())
    write(root / "queries.jsonl", b"\xef\xbb\xbf" + jsonl(QUERIES).encode())
    write(root / "qrels" / "test.tsv", "q1\td1\t1\r\nq3\td4\t3\r\n\r\n")
    ds = load_dataset(root, name="custom")
    assert ds.name == "custom"
    assert ds.corpus["doc_id"].to_list() == ["d1", "2", "d3", "d4"]
    assert ds.corpus["text"][0] == CORPUS[0]["text"]  # no stray \r
    assert ds.qrels.rows() == [("q1", "d1", 1, "test"), ("q3", "d4", 3, "test")]


def test_reading_in_small_chunks_gives_the_same_frames(
    beir_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = load_dataset(beir_dir)
    monkeypatch.setattr("jrr_pipeline.ml.data.textio.CHUNK_ROWS", 1)
    chunked = load_dataset(beir_dir)
    assert chunked.corpus.equals(whole.corpus)
    assert chunked.queries.equals(whole.queries)
    assert chunked.qrels.equals(whole.qrels)


def _corpus_lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize(
    ("corpus", "line", "field", "fragment"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"', 2, None, "malformed JSON"),
        ('{"_id": "a", "text": "x"}\n["not", "an", "object"]', 2, None, "JSON object"),
        ('{"_id": "a", "text": "x"}\n{"title": "t", "text": "y"}', 2, "_id", "missing field"),
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "title": "t"}', 2, "text", "missing field"),
        ('{"_id": "a", "text": null}', 1, "text", "null"),
        ('{"_id": 1.5, "text": "x"}', 1, "_id", "string or integer"),
        ('{"_id": "  ", "text": "x"}', 1, "_id", "empty id"),
        ('{"_id": "a", "text": 3}', 1, "text", "must be a string"),
        ('{"_id": "a", "title": ["t"], "text": "x"}', 1, "title", "must be a string"),
        ('{"_id": "a", "text": "x"}\n\n{"_id": "b", "text": "y"}', 2, None, "blank line"),
    ],
)
def test_bad_corpus_line(
    beir_dir: Path, raises_at, corpus: str, line: int, field: str | None, fragment: str
) -> None:
    write(beir_dir / "corpus.jsonl", corpus + "\n")
    raises_at(lambda: load_dataset(beir_dir), "corpus.jsonl", line, field, fragment)


def test_duplicate_doc_id_names_the_repeat_and_the_first_line(beir_dir: Path, raises_at) -> None:
    rows = [*CORPUS, {"_id": "d5", "text": "new"}, {"_id": "d3", "text": "again"}]
    write(beir_dir / "corpus.jsonl", jsonl(rows))
    err = raises_at(lambda: load_dataset(beir_dir), "corpus.jsonl", 6, "_id", "duplicate id 'd3'")
    assert "first seen at line 3" in err.problem
    assert str(err) == f"{beir_dir / 'corpus.jsonl'}:6: field '_id': {err.problem}"


def test_int_and_string_ids_that_collide_are_duplicates(beir_dir: Path, raises_at) -> None:
    write(beir_dir / "queries.jsonl", jsonl([*QUERIES, {"_id": "7", "text": "again"}]))
    raises_at(lambda: load_dataset(beir_dir), "queries.jsonl", len(QUERIES) + 1, "_id", "first seen at line 2")


def test_non_utf8_byte_names_line_and_offset(beir_dir: Path, raises_at) -> None:
    good = jsonl(CORPUS[:2]).encode()
    bad = b'{"_id": "x", "text": "caf\xe9"}\n'
    at = bad.index(b"\xe9")  # 0-based offset
    write(beir_dir / "corpus.jsonl", good + bad)
    err = raises_at(lambda: load_dataset(beir_dir), "corpus.jsonl", 3, None, "0xe9")
    assert f"byte {at} of the line" in err.problem
    assert f"byte {len(good) + at} of the file" in err.problem


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(beir_dir: Path, raises_at, content: str) -> None:
    write(beir_dir / "queries.jsonl", content)
    raises_at(lambda: load_dataset(beir_dir), "queries.jsonl", None, None, "empty")


@pytest.mark.parametrize(
    ("qrels", "line", "field", "fragment"),
    [
        ("query-id\tcorpus-id\tscore\nq1\tnope\t1\n", 2, "corpus-id", "unknown doc id 'nope'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\n", 3, "query-id", "unknown query"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "score", "must be an integer"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1.5\n", 2, "score", "must be an integer"),
        ("q1\td1\t1\nq1\td1\n", 2, None, "got 2"),
        ("q1\td1\t1\nq1\td1\t1\textra\tmore\n", 2, None, "got 5"),
        ("q1\td1\t1\nq1\td1\t2\n", 2, "score", "conflicting relevance 2"),
        ("query-id\tcorpus-id\tscore\n", None, None, "no rows"),
    ],
)
def test_bad_qrels(
    beir_dir: Path, raises_at, qrels: str, line: int | None, field: str | None, fragment: str
) -> None:
    write(beir_dir / "qrels" / "test.tsv", qrels)
    raises_at(lambda: load_dataset(beir_dir), "test.tsv", line, field, fragment)


def test_header_recognised_by_its_first_column_name(beir_dir: Path) -> None:
    write(beir_dir / "qrels" / "test.tsv", "query-id\tcorpus-id\trelevance_score\nq1\td1\t1\n")
    assert load_dataset(beir_dir).qrels.filter(pl.col("split") == "test").rows() == [
        ("q1", "d1", 1, "test")
    ]


def test_identical_repeated_qrels_row_is_kept_once(beir_dir: Path) -> None:
    write(beir_dir / "qrels" / "test.tsv", "q1\td1\t1\nq3\td4\t1\nq1\td1\t1\n")
    ds = load_dataset(beir_dir)
    assert ds.qrels.filter(pl.col("split") == "test").rows() == [
        ("q1", "d1", 1, "test"), ("q3", "d4", 1, "test"),
    ]


def test_missing_files(beir_dir: Path, raises_at) -> None:
    (beir_dir / "queries.jsonl").unlink()
    raises_at(lambda: load_dataset(beir_dir, fmt="beir"), "queries.jsonl", None, None, "does not")
    raises_at(lambda: load_dataset(beir_dir / "nope"), "nope", None, None, "does not exist")
    write(beir_dir / "queries.jsonl", jsonl(QUERIES))
    for path in (beir_dir / "qrels").iterdir():
        path.unlink()
    raises_at(lambda: load_dataset(beir_dir), "qrels", None, None, "no qrels files")
    (beir_dir / "qrels").rmdir()
    raises_at(lambda: load_dataset(beir_dir), "qrels", None, None, "does not exist")


def test_unknown_split_file_is_rejected(beir_dir: Path, raises_at) -> None:
    write(beir_dir / "qrels" / "holdout.tsv", "q1\td1\t1\n")
    raises_at(lambda: load_dataset(beir_dir), "holdout.tsv", None, None, "unknown split")
