"""CSV/Parquet reader: column mapping, split handling, CSV line and Parquet row numbers."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from jrr_pipeline.ml.data import ColumnMapping, load_dataset

from .conftest import write

MAPPING = ColumnMapping(
    doc_id="pid", title="heading", text="body", query_id="qid", query_text="question",
    qrels_query_id="qid", qrels_doc_id="pid", relevance="grade", split="fold",
)


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mycsv"
    # doc 2's body spans three physical lines (quoted), so later records sit on later lines
    write(root / "corpus.csv",
          'pid,heading,body,extra\n1,Tïtle,"plain, with comma",x\n'
          '2,,"line one\nline two\n""quoted""",y\n3,T3,日本語,z\n')
    write(root / "queries.csv", "qid,question\nq1,first?\nq2,second?\nq3,third?\n")
    write(root / "qrels.csv", "qid,pid,grade,fold\nq1,1,2,train\nq1,3,0,train\nq2,2,1,validation\n"
          "q3,3,1,Test\n")
    return root


def test_csv_with_mapping_and_split_column(csv_dir: Path) -> None:
    ds = load_dataset(csv_dir, columns=MAPPING)
    assert ds.corpus.rows() == [
        ("1", "Tïtle", "plain, with comma"),
        ("2", "", 'line one\nline two\n"quoted"'),
        ("3", "T3", "日本語"),
    ]
    assert ds.queries.rows() == [("q1", "first?"), ("q2", "second?"), ("q3", "third?")]
    assert ds.qrels.rows() == [
        ("q1", "1", 2, "train"), ("q1", "3", 0, "train"), ("q2", "2", 1, "dev"), ("q3", "3", 1, "test"),
    ]
    assert ds.qrels.schema["relevance"] == pl.Int32


def test_csv_error_line_counts_physical_lines(csv_dir: Path, raises_at) -> None:
    corpus = (csv_dir / "corpus.csv").read_text(encoding="utf-8")
    write(csv_dir / "corpus.csv", corpus + "4,T4\n")  # record 5 starts on line 7
    raises_at(lambda: load_dataset(csv_dir, columns=MAPPING), "corpus.csv", 7, None, "expected 4")
    write(csv_dir / "corpus.csv", corpus + "2,again,dup,w\n")
    err = raises_at(lambda: load_dataset(csv_dir, columns=MAPPING), "corpus.csv", 7, "pid",
                    "duplicate id '2'")
    assert "first seen at line 3" in err.problem


@pytest.mark.parametrize(
    ("name", "content", "line", "field", "fragment"),
    [
        ("qrels.csv", "qid,pid,grade,fold\nq1,1,two,train\n", 2, "grade", "must be an integer"),
        ("qrels.csv", "qid,pid,grade,fold\nq1,1,1,holdout\n", 2, "fold", "unknown split"),
        ("qrels.csv", "qid,pid,grade,fold\nq1,9,1,test\n", 2, "pid", "unknown doc id '9'"),
        ("qrels.csv", "qid,pid,fold\nq1,1,test\n", 1, "grade", "missing column"),
        ("qrels.csv", "qid,pid,grade,fold\n", None, None, "no rows"),
        ("queries.csv", "qid,question\nq1,a\n,b\n", 3, "qid", "empty id"),
        ("queries.csv", b"qid,question\nq1,\xc3(\n", 2, None, "0xc3"),
        ("queries.csv", "", None, None, "empty"),
        ("corpus.csv", 'pid,heading,body,extra\n1,t,"unterminated\n', 2, None, "malformed CSV"),
    ],
)
def test_bad_csv(
    csv_dir: Path, raises_at, name: str, content: str | bytes, line: int | None,
    field: str | None, fragment: str,
) -> None:
    write(csv_dir / name, content)
    raises_at(lambda: load_dataset(csv_dir, columns=MAPPING), name, line, field, fragment)


def test_blank_lines_inside_a_quoted_field_and_at_the_end(csv_dir: Path) -> None:
    write(csv_dir / "corpus.csv", 'pid,heading,body,extra\n1,t,"para 1\n\npara 2",x\n2,u,v,w\n\n\n')
    write(csv_dir / "qrels.csv", "qid,pid,grade,fold\nq1,2,1,test\n")
    ds = load_dataset(csv_dir, columns=MAPPING)
    assert ds.corpus.rows() == [("1", "t", "para 1\n\npara 2"), ("2", "u", "v")]


def test_blank_line_between_records_is_an_error(csv_dir: Path, raises_at) -> None:
    write(csv_dir / "queries.csv", "qid,question\nq1,a\n\nq2,b\n")
    raises_at(lambda: load_dataset(csv_dir, columns=MAPPING), "queries.csv", 3, None, "blank line")


def test_default_mapping_without_title_or_split_columns(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root / "corpus.csv", "\ufeffdoc_id,text\r\n10,a\r\n11,b\r\n")
    write(root / "queries.csv", "query_id,text\n1,q\n")
    write(root / "qrels.csv", "query_id,doc_id,relevance\n1,11,1\n")
    ds = load_dataset(root)
    assert ds.corpus.rows() == [("10", "", "a"), ("11", "", "b")]
    assert ds.qrels.rows() == [("1", "11", 1, "test")]


def test_custom_title_column_that_is_missing_is_an_error(csv_dir: Path, raises_at) -> None:
    mapping = ColumnMapping(**{**MAPPING.__dict__, "title": "headline"})
    raises_at(lambda: load_dataset(csv_dir, columns=mapping), "corpus.csv", 1, "headline",
              "missing column")


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pq"
    root.mkdir()
    pl.DataFrame({"doc_id": [5, 6, 7], "title": ["a", None, "c"], "text": ["x", "ÿ", "z"]}) \
        .write_parquet(root / "corpus.parquet")
    pl.DataFrame({"query_id": ["q1", "q2"], "text": ["one", "two"]}) \
        .write_parquet(root / "queries.parquet")
    (root / "qrels").mkdir()
    pl.DataFrame({"query_id": ["q1"], "doc_id": ["5"], "relevance": [1.0]}) \
        .write_parquet(root / "qrels" / "val.parquet")
    pl.DataFrame({"query_id": ["q2", "q2"], "doc_id": ["6", "7"], "relevance": [3, 0]}) \
        .write_parquet(root / "qrels" / "test.parquet")
    return root


def test_parquet_per_split_files(parquet_dir: Path) -> None:
    ds = load_dataset(parquet_dir)
    assert ds.corpus.rows() == [("5", "a", "x"), ("6", "", "ÿ"), ("7", "c", "z")]
    pl.DataFrame({"doc_id": [5, 6, 7], "title": [None] * 3, "text": ["x", "y", "z"]}) \
        .write_parquet(parquet_dir / "corpus.parquet")
    assert load_dataset(parquet_dir).corpus["title"].to_list() == ["", "", ""]
    assert ds.qrels.rows() == [("q1", "5", 1, "dev"), ("q2", "6", 3, "test"), ("q2", "7", 0, "test")]
    assert [p.name for p in ds.source_files] == [
        "corpus.parquet", "queries.parquet", "val.parquet", "test.parquet"
    ]


@pytest.mark.parametrize(
    ("frame", "field", "row", "fragment"),
    [
        ({"query_id": ["q1", "q2"], "doc_id": ["5", "6"], "relevance": [1.0, 1.5]},
         "relevance", 2, "must be an integer"),
        ({"query_id": ["q1", "q2"], "doc_id": ["5", "6"], "relevance": ["1", "x"]},
         "relevance", 2, "must be an integer"),
        ({"query_id": ["q1", None], "doc_id": ["5", "6"], "relevance": [1, 1]},
         "query_id", 2, "null"),
        ({"query_id": ["q1", "q2", "q2"], "doc_id": ["5", "6", "6"], "relevance": [1, 1, 2]},
         "relevance", 3, "conflicting relevance 2"),
        ({"query_id": ["q1", "q3"], "doc_id": ["5", "6"], "relevance": [1, 1]},
         "query_id", 2, "unknown query id 'q3'"),
    ],
)
def test_bad_parquet_names_the_row(
    parquet_dir: Path, raises_at, frame: dict, field: str, row: int, fragment: str
) -> None:
    pl.DataFrame(frame).write_parquet(parquet_dir / "qrels" / "test.parquet")
    err = raises_at(lambda: load_dataset(parquet_dir), "test.parquet", row, field, fragment)
    assert f"row {row}" in err.problem


def test_parquet_duplicate_and_bad_types(parquet_dir: Path, raises_at) -> None:
    pl.DataFrame({"doc_id": [5, 6, 5], "text": ["x", "y", "z"]}).write_parquet(
        parquet_dir / "corpus.parquet"
    )
    err = raises_at(lambda: load_dataset(parquet_dir), "corpus.parquet", 3, "doc_id", "duplicate")
    assert "row 3" in err.problem and "first seen at row 1" in err.problem
    pl.DataFrame({"doc_id": [5.0, 6.0], "text": ["x", "y"]}).write_parquet(
        parquet_dir / "corpus.parquet"
    )
    raises_at(lambda: load_dataset(parquet_dir), "corpus.parquet", None, "doc_id", "Float64")
    (parquet_dir / "corpus.parquet").write_bytes(b"PAR1 not really parquet")
    raises_at(lambda: load_dataset(parquet_dir), "corpus.parquet", None, None, "cannot read")


def test_ambiguous_tabular_files(parquet_dir: Path, raises_at) -> None:
    write(parquet_dir / "qrels.csv", "query_id,doc_id,relevance\nq1,5,1\n")
    raises_at(lambda: load_dataset(parquet_dir), "qrels", None, None, "ambiguous")
    (parquet_dir / "qrels.csv").unlink()
    write(parquet_dir / "queries.csv", "query_id,text\nq1,one\n")
    raises_at(lambda: load_dataset(parquet_dir), "queries.parquet", None, None, "ambiguous")
