"""Bad input to ``jrr run``: each case damages a copy of a good dataset, runs the data stage and
checks the exit code, the exact last line (``file:line: field 'x': problem``, with the run id
when the failure happened inside a Dagster run) and that the good tables are untouched.

One good home per module: the toy dataset's tables are materialized once; every case runs
against it, in this process (what the ``jrr`` console script calls).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.jrr import copy_dataset, fingerprints, home_for, jrr
from tests.ml.data.conftest import write

BIG = "x" * 10_000_000  # a 10 MB value: echoed at most ~80 characters
SHOWN_BIG = "'" + "x" * 76 + "..."


def edit_line(rel: str, number: int, change: Callable[[str], str]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        lines = (data / rel).read_text(encoding="utf-8").split("\n")
        lines[number - 1] = change(lines[number - 1])
        (data / rel).write_text("\n".join(lines), encoding="utf-8")
    return damage


def edit_json(rel: str, number: int, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(line: str) -> str:
        obj = json.loads(line)
        change(obj)
        return json.dumps(obj)
    return edit_line(rel, number, edit)


def append(rel: str, text: str) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        with open(data / rel, "a", encoding="utf-8") as fh:
            fh.write(text)
    return damage


def put(rel: str, content: str | bytes) -> Callable[[Path], None]:
    return lambda data: write(data / rel, content) and None


def link(rel: str, target: str) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        (data / rel).unlink(missing_ok=True)
        os.symlink(target, data / rel)
    return damage


def replace_bytes(rel: str, old: bytes, new: bytes) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        (data / rel).write_bytes((data / rel).read_bytes().replace(old, new, 1))
    return damage


def pretty_json_array(data: Path) -> None:
    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    (data / "corpus.jsonl").write_text(json.dumps(rows, indent=2))


def one_line_json_array(data: Path) -> None:
    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    (data / "corpus.jsonl").write_text(json.dumps(rows) + "\n")


def drop_field(key: str) -> Callable[[dict], None]:
    return lambda obj: obj.pop(key)


def set_field(key: str, value) -> Callable[[dict], None]:
    return lambda obj: obj.__setitem__(key, value)


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], None]
    problem: str  # the last line after "jrr: error: "; {d} = the damaged dataset directory
    during_run: bool = True  # False: refused before any Dagster run
    base: str = "beir"  # the good dataset damaged: beir, csv (column mapping in JRR_SETTINGS), marco
    extra: tuple[str, ...] = ()  # more `jrr run` arguments


LEAK = ("query 'q0_0' is in the test split and in train (at train.tsv:2): a query may be in "
        "train or dev, or in test, never both")
CASES = [
    # corpus.jsonl
    Case("malformed_json", edit_line("corpus.jsonl", 7, lambda s: s[:-1]),
         "{d}/corpus.jsonl:7: malformed JSON: Expecting ',' delimiter (column 126)"),
    Case("missing_text", edit_json("corpus.jsonl", 7, drop_field("text")),
         "{d}/corpus.jsonl:7: field 'text': missing field"),
    Case("null_text", edit_json("corpus.jsonl", 7, set_field("text", None)),
         "{d}/corpus.jsonl:7: field 'text': must be a string, got null"),
    Case("numeric_text", edit_json("corpus.jsonl", 7, set_field("text", 42)),
         "{d}/corpus.jsonl:7: field 'text': must be a string, got int"),
    Case("missing_id", edit_json("corpus.jsonl", 7, drop_field("_id")),
         "{d}/corpus.jsonl:7: field '_id': missing field"),
    Case("blank_id", edit_json("corpus.jsonl", 7, set_field("_id", "  ")),
         "{d}/corpus.jsonl:7: field '_id': empty id"),
    Case("float_id", edit_json("corpus.jsonl", 7, set_field("_id", 1.5)),
         "{d}/corpus.jsonl:7: field '_id': id must be a string or integer, got 1.5"),
    Case("duplicate_doc", append("corpus.jsonl", '{"_id": "d0_0", "text": "again"}\n'),
         "{d}/corpus.jsonl:81: field '_id': duplicate id 'd0_0' (first seen at line 1)"),
    Case("latin1_byte", replace_bytes("corpus.jsonl", b"Vaccine report 2", b"Vaccine r\xe9port 2"),
         "{d}/corpus.jsonl:7: invalid UTF-8 byte 0xe9 at byte 35 of the line (byte 932 of the "
         "file)"),
    Case("lone_surrogate", edit_line("corpus.jsonl", 7, lambda s: s.replace("observed",
                                                                            "obs\\ud800erved")),
         "{d}/corpus.jsonl:7: field 'text': lone surrogate \\ud800 at character 4: a \\u "
         "escape of half a UTF-16 pair is not valid Unicode"),
    Case("pretty_json_array", pretty_json_array,
         "{d}/corpus.jsonl:1: malformed JSON: Expecting value (column 2); the file holds a JSON "
         "array, but JSON lines are expected (one object per line: jq -c '.[]' in.json > "
         "out.jsonl)"),
    Case("json_array_on_one_line", one_line_json_array,
         "{d}/corpus.jsonl:1: expected a JSON object, got '[{{\"_id\": \"d0_0\", \"title\": "
         "\"Protein report 0\", \"text\": \"effect protein study ...; the file holds a JSON array, but "
         "JSON lines are expected (one object per line: jq -c '.[]' in.json > out.jsonl)"),
    Case("blank_line_inside", edit_line("corpus.jsonl", 5, lambda s: ""),
         "{d}/corpus.jsonl:5: blank line inside the file (only trailing ones are allowed)"),
    Case("empty_corpus", put("corpus.jsonl", ""), "{d}/corpus.jsonl: file is empty"),
    Case("no_corpus_file", lambda d: (d / "corpus.jsonl").unlink(),
         "{d}: cannot detect the format: expected corpus.jsonl (BEIR), collection.tsv (MS MARCO) "
         "or corpus.csv / .tsv / .parquet (tabular)", during_run=False),
    Case("corpus_link_loop", link("corpus.jsonl", "corpus.jsonl"),
         "{d}/corpus.jsonl: corpus file is a symbolic link loop", during_run=False),
    Case("corpus_broken_link", link("corpus.jsonl", "moved/corpus.jsonl"),
         "{d}/corpus.jsonl: corpus file is a broken symbolic link (to moved/corpus.jsonl)",
         during_run=False),
    Case("corpus_is_a_directory", lambda d: (d / "corpus.jsonl").unlink()
         or (d / "corpus.jsonl").mkdir(),
         "{d}/corpus.jsonl: corpus file is not a file", during_run=False),
    # queries.jsonl
    Case("empty_queries", put("queries.jsonl", ""), "{d}/queries.jsonl: file is empty"),
    Case("duplicate_query", append("queries.jsonl", '{"_id": "q0_2", "text": "x"}\n'),
         "{d}/queries.jsonl:61: field '_id': duplicate id 'q0_2' (first seen at line 3)"),
    Case("query_not_an_object", edit_line("queries.jsonl", 3, lambda s: '"q0_2"'),
         "{d}/queries.jsonl:3: expected a JSON object, got '\"q0_2\"'"),
    Case("huge_unknown_doc_id", append("qrels/test.tsv", f"q0_2\t{BIG}\t1\n"),
         f"{{d}}/qrels/test.tsv:22: field 'corpus-id': unknown doc id {SHOWN_BIG} (not in the "
         f"corpus)"),
    # qrels
    Case("leak_train_test", append("qrels/test.tsv", "q0_0\td0_0\t1\n"),
         f"{{d}}/qrels/test.tsv:22: field 'query-id': {LEAK}"),
    Case("leak_dev_test", put("qrels/dev.tsv", "q0_2\td0_0\t1\n"),
         "{d}/qrels/test.tsv:2: field 'query-id': query 'q0_2' is in the test split and in dev "
         "(at dev.tsv:1): a query may be in train or dev, or in test, never both"),
    Case("unknown_doc", append("qrels/test.tsv", "q0_2\tno_such_doc\t1\n"),
         "{d}/qrels/test.tsv:22: field 'corpus-id': unknown doc id 'no_such_doc' (not in the "
         "corpus)"),
    Case("unknown_query", append("qrels/test.tsv", "q9_9\td0_0\t1\n"),
         "{d}/qrels/test.tsv:22: field 'query-id': unknown query id 'q9_9' (not among the "
         "queries)"),
    Case("fourth_qrels_column", append("qrels/test.tsv", "q0_2\td0_1\t1\t0\n"),
         "{d}/qrels/test.tsv:22: expected 3 tab-separated columns (query-id, corpus-id, score), "
         "got 4 tab-separated"),
    Case("two_qrels_columns", append("qrels/test.tsv", "q0_2\td0_1\n"),
         "{d}/qrels/test.tsv:22: expected 3 tab-separated columns (query-id, corpus-id, score), "
         "got 2 tab-separated"),
    Case("score_out_of_range", append("qrels/test.tsv", "q0_2\td0_1\t3000000000\n"),
         "{d}/qrels/test.tsv:22: field 'score': relevance 3000000000 is out of range (a 32-bit "
         "integer, -2147483648..2147483647)"),
    Case("score_not_a_number", append("qrels/test.tsv", "q0_2\td0_1\thigh\n"),
         "{d}/qrels/test.tsv:22: field 'score': relevance must be an integer, got 'high'"),
    Case("score_fraction", append("qrels/test.tsv", "q0_2\td0_1\t1.5\n"),
         "{d}/qrels/test.tsv:22: field 'score': relevance must be an integer, got '1.5'"),
    Case("huge_score", append("qrels/test.tsv", f"q0_2\td0_1\t{BIG}\n"),
         f"{{d}}/qrels/test.tsv:22: field 'score': relevance must be an integer, got "
         f"{SHOWN_BIG}"),
    Case("conflicting_relevance", append("qrels/test.tsv", "q0_2\td0_0\t2\n"),
         "{d}/qrels/test.tsv:22: field 'score': conflicting relevance 2 for query 'q0_2' and "
         "doc 'd0_0' in split 'test' (1 at line 2)"),
    Case("empty_qrels_id", append("qrels/test.tsv", "\td0_0\t1\n"),
         "{d}/qrels/test.tsv:22: field 'query-id': empty id"),
    Case("header_only_qrels", put("qrels/test.tsv", "query-id\tcorpus-id\tscore\n"),
         "{d}/qrels/test.tsv: file has a header but no rows"),
    Case("unknown_split_file", put("qrels/holdout.tsv", "q0_2\td0_0\t1\n"),
         "{d}/qrels/holdout.tsv: unknown split 'holdout'; name qrels files train, dev (or "
         "validation), test", during_run=False),
    Case("no_qrels_directory", lambda d: shutil.rmtree(d / "qrels"),
         "{d}/qrels: required directory does not exist", during_run=False),
    # settings that do not fit the directory
    Case("mapping_on_beir", lambda d: None,
         "{d}: dataset.columns maps CSV / TSV / Parquet columns, but this directory has the "
         "beir layout (fixed names)", during_run=False, extra=("--set", "dataset.columns.text=body")),
    # CSV with its own column names, mapped by [dataset.columns] in JRR_SETTINGS
    Case("csv_column_not_in_header", lambda d: None,
         "{d}/corpus.csv:1: field 'abstract': missing column, the file's header has id, heading, "
         "body; map another one with --set dataset.columns.text=COLUMN", during_run=False,
         base="csv", extra=("--set", "dataset.columns.text=abstract")),
    Case("csv_short_row", append("corpus.csv", "d9_9,T\n"),
         "{d}/corpus.csv:82: expected 3 columns, got 2", base="csv"),
    Case("csv_grade_not_a_number", edit_line("qrels.csv", 3, lambda s: s.replace(",1,", ",x,")),
         "{d}/qrels.csv:3: field 'grade': relevance must be an integer, got 'x'", base="csv"),
    Case("csv_unknown_split", edit_line("qrels.csv", 3, lambda s: s.replace("train", "holdout")),
         "{d}/qrels.csv:3: field 'fold': unknown split 'holdout'; expected one of ['dev', 'test', "
         "'train', 'val', 'validation']", base="csv"),
    Case("csv_leak", append("qrels.csv", "q0_0,d0_0,1,test\n"),
         f"{{d}}/qrels.csv:62: field 'qid': {LEAK.replace('train.tsv:2', 'line 2')}", base="csv"),
    # MS MARCO: headerless TSV, TREC qrels allowed, one form per file
    Case("marco_row_without_tab", edit_line("collection.tsv", 2, lambda s: s.replace("\t", " ")),
         "{d}/collection.tsv:2: expected 2 tab-separated columns (pid, text), got 1",
         base="marco"),
    Case("marco_mixed_qrels_forms", edit_line("qrels.train.tsv", 2,
                                              lambda s: s.replace(" 0 ", "\t").replace(" ", "\t")),
         "{d}/qrels.train.tsv:2: 3 columns, but line 1 has 4: one qrels form per file",
         base="marco"),
    Case("marco_five_trec_columns", edit_line("qrels.train.tsv", 2, lambda s: s + " 7"),
         "{d}/qrels.train.tsv:2: expected 3 tab-separated columns (qid, pid, rel) or 4 TREC "
         "columns (query, iteration, doc, relevance), got 5 space-separated", base="marco"),
]
MAPPING = ('[dataset]\nformat = "tabular"\n[dataset.columns]\ndoc_id = "id"\ntitle = "heading"\n'
           'text = "body"\nquery_id = "qid"\nquery_text = "question"\nqrels_query_id = "qid"\n'
           'qrels_doc_id = "pid"\nrelevance = "grade"\nsplit = "fold"\n')


def as_csv(beir: Path, root: Path, sep: str = ",", suffix: str = ".csv") -> Path:
    """The toy dataset in the tabular layout with its own column names (see MAPPING)."""
    import polars as pl

    from jrr_pipeline.ml.data import load_dataset

    ds = load_dataset(beir)
    root.mkdir(parents=True, exist_ok=True)
    ds.corpus.rename({"doc_id": "id", "title": "heading", "text": "body"}) \
        .write_csv(root / f"corpus{suffix}", separator=sep)
    ds.queries.rename({"query_id": "qid", "text": "question"}) \
        .write_csv(root / f"queries{suffix}", separator=sep)
    ds.qrels.rename({"query_id": "qid", "doc_id": "pid", "relevance": "grade", "split": "fold"}) \
        .with_columns(pl.col("fold")).write_csv(root / f"qrels{suffix}", separator=sep)
    return root


def as_marco(beir: Path, root: Path) -> Path:
    """The toy dataset in the MS MARCO layout (TREC qrels, no titles)."""
    from jrr_pipeline.ml.data import load_dataset

    ds = load_dataset(beir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text("".join(f"{d}\t{t}\n" for d, _, t in ds.corpus.rows()))
    (root / "queries.train.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in ds.queries.rows()))
    for split in ("train", "test"):
        rows = ds.qrels.filter(ds.qrels["split"] == split).rows()
        (root / f"qrels.{split}.tsv").write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r, _ in rows))
    return root


@pytest.fixture(scope="module")
def bases(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    (root / "mapping.toml").write_text(MAPPING)
    return {"beir": beir_dir, "csv": as_csv(beir_dir, root / "csv"),
            "tsv": as_csv(beir_dir, root / "tsv", "\t", ".tsv"),
            "marco": as_marco(beir_dir, root / "marco"), "mapping": root / "mapping.toml"}


@pytest.fixture(scope="module")
def good(beir_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A home whose data tables hold the good toy dataset; yields (home, fingerprints)."""
    root = tmp_path_factory.mktemp("bad-input")
    with home_for(root) as (home, _monkeypatch):
        data = copy_dataset(beir_dir, root / "toyset")
        result = jrr("run", str(data), "--preset", "ci", "--select", "corpus", "--quiet")
        assert result.code == 0, result.err[-2000:]
        yield home, fingerprints(home)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_rejected_with_one_line_and_the_tables_kept(good, bases, tmp_path, case,
                                                                 monkeypatch):
    home, before = good
    data = copy_dataset(bases[case.base], tmp_path / "toyset")
    if case.base == "csv":
        monkeypatch.setenv("JRR_SETTINGS", str(bases["mapping"]))
    case.damage(data)
    result = jrr("run", str(data), "--preset", "ci", "--select", "corpus", "--quiet", *case.extra)
    result.assert_clean_error(1, case.problem.format(d=data), case.during_run)
    assert fingerprints(home) == before


@pytest.mark.parametrize("layout", ["csv", "tsv"])
def test_column_mapping_from_settings_reads_the_same_tables(good, bases, tmp_path, layout,
                                                           monkeypatch):
    """[dataset.columns] in JRR_SETTINGS maps the files' own column names: the tables equal the
    BEIR copy's; without the mapping the header check refuses the run before any work."""
    home, before = good
    data = copy_dataset(bases[layout], tmp_path / "toyset")
    unmapped = jrr("run", str(data), "--preset", "ci", "--select", "corpus", "--quiet")
    unmapped.assert_clean_error(
        1, f"{data}/corpus.{layout}:1: field 'doc_id': missing column, the file's header has id, "
           f"heading, body; map another one with --set dataset.columns.doc_id=COLUMN", False)
    monkeypatch.setenv("JRR_SETTINGS", str(bases["mapping"]))
    mapped = jrr("run", str(data), "--preset", "ci", "--select", "corpus", "--quiet")
    assert mapped.code == 0, mapped.err[-2000:]
    assert fingerprints(home) == before


def test_progress_output_keeps_one_error_line_and_verbose_shows_the_stack(good, beir_dir,
                                                                          tmp_path):
    """The issue's repro with progress on: Dagster's events one line each, the error last; the
    stack traces only with --verbose."""
    home, before = good
    data = copy_dataset(beir_dir, tmp_path / "toyset")
    append("qrels/test.tsv", "q0_0\td0_0\t1\n")(data)
    args = ("run", str(data), "--preset", "ci", "--select", "*bm25_negatives")
    plain = jrr(*args)
    plain.assert_clean_error(1, f"{data}/qrels/test.tsv:22: field 'query-id': {LEAK}", True)
    assert "STEP_FAILURE" in plain.err and len((plain.out + plain.err).splitlines()) < 12
    verbose = jrr(*args, "--verbose")
    assert verbose.code == 1 and 'File "' in verbose.err
    assert verbose.last_line.split(" (run ")[0] == plain.last_line.split(" (run ")[0]
    assert fingerprints(home) == before
