"""Format detection, the file listing, the error type, and the package's purity."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from jrr_pipeline.ml.data import (
    ColumnMapping,
    DataFormatError,
    dataset_files,
    detect_format,
    load_dataset,
)

from .conftest import write


def _tabular(root: Path) -> Path:
    write(root / "corpus.csv", "doc_id,text\nd1,a\n")
    write(root / "queries.csv", "query_id,text\nq1,b\n")
    write(root / "qrels" / "dev.csv", "query_id,doc_id,relevance\nq1,d1,1\n")
    return root


def _marco(root: Path) -> Path:
    write(root / "collection.tsv", "1\ta\n")
    write(root / "queries.dev.tsv", "9\tb\n")
    write(root / "qrels.dev.tsv", "9 0 1 1\n")
    return root


def test_detect_each_format(beir_dir: Path, tmp_path: Path) -> None:
    assert detect_format(beir_dir) == "beir"
    assert detect_format(_marco(tmp_path / "m")) == "msmarco"
    assert detect_format(str(_tabular(tmp_path / "t"))) == "tabular"


def test_detect_failures(beir_dir: Path, tmp_path: Path, raises_at) -> None:
    raises_at(lambda: detect_format(tmp_path / "missing"), "missing", None, None, "does not exist")
    (tmp_path / "empty").mkdir()
    raises_at(lambda: detect_format(tmp_path / "empty"), "empty", None, None, "cannot detect")
    write(beir_dir / "corpus.parquet", b"")
    raises_at(lambda: detect_format(beir_dir), "tinybeir", None, None, "ambiguous")
    # an explicit format resolves the ambiguity
    assert load_dataset(beir_dir, fmt="BEIR").corpus.height == 4


def test_dataset_files_match_what_load_reads(beir_dir: Path, tmp_path: Path) -> None:
    for root in (beir_dir, _marco(tmp_path / "m"), _tabular(tmp_path / "t")):
        assert dataset_files(root) == load_dataset(root).source_files
    assert [p.name for p in dataset_files(tmp_path / "t", fmt="tabular")] == [
        "corpus.csv", "queries.csv", "dev.csv"
    ]


def test_dataset_files_does_not_parse_but_checks_presence(tmp_path: Path, raises_at) -> None:
    root = _marco(tmp_path / "m")
    write(root / "collection.tsv", "garbage without tabs\n")
    assert [p.name for p in dataset_files(root)] == ["collection.tsv", "queries.dev.tsv",
                                                     "qrels.dev.tsv"]
    (root / "qrels.dev.tsv").unlink()
    raises_at(lambda: dataset_files(root), "qrels.train.tsv", None, None, "does not exist")


def test_unknown_format_and_misplaced_mapping(beir_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format 'xml'"):
        load_dataset(beir_dir, fmt="xml")
    # a column mapping only concerns the tabular format: elsewhere it is an error, not ignored
    with pytest.raises(DataFormatError, match="has the beir layout"):
        load_dataset(beir_dir, columns=ColumnMapping(doc_id="nope"))


def test_error_string_attributes_and_pickling() -> None:
    full = DataFormatError("a/b.tsv", 3, "pid", "empty id")
    assert str(full) == "a/b.tsv:3: field 'pid': empty id"
    assert str(DataFormatError("a/b.tsv", None, "pid", "missing column")) == (
        "a/b.tsv: field 'pid': missing column"
    )
    assert str(DataFormatError(Path("a/b.tsv"), 7, None, "bad")) == "a/b.tsv:7: bad"
    assert str(DataFormatError("dir", problem="missing")) == "dir: missing"
    assert isinstance(full, ValueError)
    clone = pickle.loads(pickle.dumps(full))
    assert (clone.path, clone.line, clone.field, clone.problem) == ("a/b.tsv", 3, "pid", "empty id")
    assert str(clone) == str(full)


def test_data_package_imports_no_dagster_and_logs_nothing(beir_dir: Path) -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG)\n"
        "from jrr_pipeline.ml.data import load_dataset\n"
        f"load_dataset({str(beir_dir)!r})\n"
        "assert 'dagster' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
