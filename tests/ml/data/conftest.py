"""Tiny dataset writers shared by the data tests (each test builds its own files in tmp_path)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from jrr_pipeline.ml.data import DataFormatError

CORPUS = [
    {"_id": "d1", "title": "Café culture", "text": "Espresso in Zürich — naïve façade ☕"},
    {"_id": 2, "text": "A doc with an integer id and no title", "metadata": {"year": 2020}},
    {"_id": "d3", "title": None, "text": "Third doc, null title"},
    {"_id": "d4", "title": "Graphs", "text": "日本語のテキスト"},
]
QUERIES = [
    {"_id": "q1", "text": "where to drink coffee?"},
    {"_id": 7, "text": "integer query id", "metadata": {}},
    {"_id": "q3", "text": "日本語"},
    {"_id": "q4", "text": "a train query"},
]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    """A valid BEIR directory: graded qrels, a dev split named validation.tsv, unicode text."""
    root = tmp_path / "tinybeir"
    write(root / "corpus.jsonl", jsonl(CORPUS))
    write(root / "queries.jsonl", jsonl(QUERIES))
    write(root / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq4\td1\t2\nq4\t2\t0\n")
    write(root / "qrels" / "validation.tsv", "query-id\tcorpus-id\tscore\n7\td3\t1\n")
    write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq3\td4\t1\nq1\td4\t1\n")
    return root


@pytest.fixture
def raises_at() -> Callable[..., DataFormatError]:
    """Call ``fn`` and check the DataFormatError's file name, line and field."""

    def check(fn: Callable[[], object], name: str, line: int | None, field: str | None,
              *fragments: str) -> DataFormatError:
        with pytest.raises(DataFormatError) as info:
            fn()
        err = info.value
        assert Path(err.path).name == name, str(err)
        assert err.line == line, str(err)
        assert err.field == field, str(err)
        for fragment in fragments:
            assert fragment in err.problem, str(err)
        return err

    return check
