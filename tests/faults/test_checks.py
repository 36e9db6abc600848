"""Asset checks as ``jrr run`` reports them: a failed ERROR check blocks what lies below its
asset and fails the command; every check that did not pass is printed, WARN included."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from tests.faults.jrr import copy_dataset, fingerprints, home_for, jrr

SELECT = ("--preset", "ci", "--select", "*bm25_negatives", "--quiet")


@pytest.fixture(scope="module")
def built(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A home with the data tables, the BM25 index and the BM25 negatives of the toy dataset."""
    root = tmp_path_factory.mktemp("checks")
    with home_for(root) as (home, _monkeypatch):
        data = copy_dataset(beir_dir, root / "toyset")
        result = jrr("run", str(data), *SELECT)
        assert result.code == 0, result.err[-2000:]
        yield home, data


def test_a_leak_past_validation_is_stopped_by_the_blocking_check(built, monkeypatch):
    """The leak is rejected by validation before any write (tests/faults/test_bad_input.py); if
    validation missed one, the blocking ERROR check on the written qrels stops bm25_negatives."""
    home, data = built
    negatives = fingerprints(home, ("negatives",))
    monkeypatch.setattr("jrr_pipeline.ml.data.loader.check_split_leak", lambda *args: None)
    with open(data / "qrels" / "test.tsv", "a") as fh:
        fh.write("q0_0\td0_0\t1\n")
    try:
        result = jrr("run", str(data), *SELECT)
    finally:
        lines = (data / "qrels" / "test.tsv").read_text().splitlines()
        (data / "qrels" / "test.tsv").write_text("\n".join(lines[:-1]) + "\n")
    check = ("check qrels:qrels_no_split_leak failed (ERROR): 1 of 60 queries in test and in "
             "train or dev, e.g. 'q0_0'")
    assert check in result.err.splitlines()
    result.assert_clean_error(1, f"{check}; what lies below it was not run", during_run=True)
    assert fingerprints(home, ("negatives",)) == negatives  # not mined from the leaked split


def test_warnings_are_printed_and_do_not_fail(built):
    home, data = built
    lines = (data / "corpus.jsonl").read_text().splitlines()
    doc = json.loads(lines[6])
    lines[6] = json.dumps({**doc, "text": "  "})
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    result = jrr("run", str(data), *SELECT)
    assert result.code == 0, result.err[-2000:]
    assert ("check corpus:corpus_nonempty_text failed (WARN): 1 of 80 empty documents, e.g. "
            "'d1_2'") in result.out.splitlines()
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT text FROM corpus WHERE doc_id = 'd1_2'").fetchone() == ("  ",)
    con.close()
