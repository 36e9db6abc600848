"""MS MARCO style reader: TSV collection, split-named query and qrels files, both qrels forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from jrr_pipeline.ml.data import load_dataset
from jrr_pipeline.ml.data.tsv import _exact_id_text, _fast_id_text

from .conftest import write

COLLECTION = "0\tThe first passage.\n1\tΣ second — ünïcode\n2\tthird passage\n3\tfourth\n"


@pytest.fixture
def marco_dir(tmp_path: Path) -> Path:
    root = tmp_path / "marco"
    write(root / "collection.tsv", COLLECTION)
    write(root / "queries.train.tsv", "100\twhat is first\n101\tsecond?\n")
    write(root / "queries.dev.small.tsv", "200\tdev query\n101\tsecond?\n")
    write(root / "queries.eval.tsv", "300\tunlabelled eval query\n")
    # train: TREC form, space separated, graded; dev: tab form with a header
    write(root / "qrels.train.tsv", "100 0 0 1\n101 0 1 2\n101 0 3 0\n")
    write(root / "qrels.dev.small.tsv", "qid\tpid\trel\n200\t2\t1\n101\t1\t1\n")
    return root


def test_loads_splits_from_middle_names(marco_dir: Path) -> None:
    ds = load_dataset(marco_dir)
    assert ds.name == "marco"
    assert ds.corpus.rows() == [
        ("0", "", "The first passage."),
        ("1", "", "Σ second — ünïcode"),
        ("2", "", "third passage"),
        ("3", "", "fourth"),
    ]
    # train file, then dev, then others; query 101 repeats with the same text -> kept once
    assert ds.queries.rows() == [
        ("100", "what is first"),
        ("101", "second?"),
        ("200", "dev query"),
        ("300", "unlabelled eval query"),
    ]
    assert ds.qrels.rows() == [
        ("100", "0", 1, "train"),
        ("101", "1", 2, "train"),
        ("101", "3", 0, "train"),
        ("200", "2", 1, "dev"),
        ("101", "1", 1, "dev"),
    ]
    assert [p.name for p in ds.source_files] == [
        "collection.tsv", "queries.train.tsv", "queries.dev.small.tsv", "queries.eval.tsv",
        "qrels.train.tsv", "qrels.dev.small.tsv",
    ]


def test_tab_separated_trec_form_and_overlapping_dev_files(marco_dir: Path) -> None:
    write(marco_dir / "qrels.train.tsv", "100\t0\t0\t1\n")
    # the full and the small dev qrels overlap (files of one split are read in name order:
    # qrels.dev.small.tsv, then qrels.dev.tsv); identical rows are kept once
    write(marco_dir / "qrels.dev.tsv", "200\t2\t1\n101\t2\t1\n")
    ds = load_dataset(marco_dir, fmt="msmarco")
    assert ds.qrels.rows() == [
        ("100", "0", 1, "train"),
        ("200", "2", 1, "dev"),
        ("101", "1", 1, "dev"),
        ("101", "2", 1, "dev"),
    ]


def test_query_id_with_different_text_in_two_files(marco_dir: Path, raises_at) -> None:
    write(marco_dir / "queries.dev.small.tsv", "200\tdev query\n101\tanother text\n")
    err = raises_at(
        lambda: load_dataset(marco_dir), "queries.dev.small.tsv", 2, "qid", "different text"
    )
    assert "queries.train.tsv:2" in err.problem


def test_query_id_twice_in_one_file_is_an_error_even_with_same_text(
    marco_dir: Path, raises_at
) -> None:
    write(marco_dir / "queries.train.tsv", "100\twhat is first\n101\tsecond?\n100\twhat is first\n")
    raises_at(lambda: load_dataset(marco_dir), "queries.train.tsv", 3, "qid", "first seen at line 1")


@pytest.mark.parametrize(
    ("name", "content", "line", "field", "fragment"),
    [
        ("collection.tsv", "0\tok\n1\ttext\twith a tab\n", 2, None, "expected 2"),
        ("collection.tsv", "0\tok\n1 no tab here\n", 2, None, "got 1"),
        ("collection.tsv", "0\tok\n\tmissing id\n", 2, "pid", "empty id"),
        ("collection.tsv", "0\tok\n1\ta\n0\tagain\n", 3, "pid", "duplicate id '0'"),
        ("queries.train.tsv", "100\tq\n101\n", 2, None, "expected 2"),
        ("qrels.train.tsv", "100 0 0 1\n100 0 0\n", 2, None, "got 3 space-separated"),
        ("qrels.train.tsv", "100 0 0 1\n100 0 99 1\n", 2, "pid", "unknown doc id '99'"),
        ("qrels.train.tsv", "100 0 0 1\n999 0 0 1\n", 2, "qid", "unknown query id '999'"),
        ("qrels.train.tsv", "100 0 0 1\n100\t0\t1\n", 2, None, "but line 1 has 4"),
        ("qrels.train.tsv", "100 0 0 yes\n", 1, "rel", "must be an integer"),
        ("qrels.train.tsv", "100 0 0 99999999999\n", 1, "rel",
         "relevance 99999999999 is out of range (a 32-bit integer"),
    ],
)
def test_bad_rows(
    marco_dir: Path, raises_at, name: str, content: str, line: int, field: str | None, fragment: str
) -> None:
    write(marco_dir / name, content)
    raises_at(lambda: load_dataset(marco_dir), name, line, field, fragment)


def test_non_utf8_in_collection(marco_dir: Path, raises_at) -> None:
    write(marco_dir / "collection.tsv", b"0\tok\n1\tbad \xff byte\n")
    err = raises_at(lambda: load_dataset(marco_dir), "collection.tsv", 2, None, "0xff")
    assert "byte 6 of the line (byte 11 of the file)" in err.problem


def test_missing_and_unknown_files(marco_dir: Path, raises_at) -> None:
    write(marco_dir / "qrels.holdout.tsv", "100 0 0 1\n")
    raises_at(lambda: load_dataset(marco_dir), "qrels.holdout.tsv", None, None, "unknown split")
    (marco_dir / "qrels.holdout.tsv").unlink()
    for path in marco_dir.glob("qrels.*"):
        path.unlink()
    raises_at(lambda: load_dataset(marco_dir), "qrels.train.tsv", None, None, "does not exist")
    for path in marco_dir.glob("queries.*"):
        path.unlink()
    raises_at(lambda: load_dataset(marco_dir), "queries.train.tsv", None, None, "does not exist")


@pytest.mark.parametrize(
    ("content", "fast"),
    [
        (COLLECTION, True),
        (COLLECTION.rstrip("\n"), True),  # no final newline
        (" 7 \tpadded id\n8\tx\n", True),
        (COLLECTION + "\n\n", False),  # trailing blank lines
        (COLLECTION.replace("\n", "\r\n"), False),
        ("\ufeff" + COLLECTION, False),
        ("0\t\n1\tsecond\n", False),  # empty text
        ("0\tfirst\rsecond\n1\tb\n", False),  # carriage return inside a line
    ],
)
def test_polars_fast_path_agrees_with_the_exact_reader(
    tmp_path: Path, content: str, fast: bool
) -> None:
    path = write(tmp_path / "collection.tsv", content)
    exact = _exact_id_text(path, "pid", "text", "doc_id", progress=False)
    quick = _fast_id_text(path, "doc_id", progress=False)
    assert (quick is not None) == fast
    if quick is not None:
        assert quick.equals(exact)
        assert quick.schema == exact.schema


def test_progress_bars_do_not_change_the_result(marco_dir: Path, capsys) -> None:
    assert load_dataset(marco_dir, progress=True).qrels.equals(load_dataset(marco_dir).qrels)
    assert "collection.tsv" in capsys.readouterr().err
