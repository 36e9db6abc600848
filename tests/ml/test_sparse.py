"""BM25 index: scoring against hand-computed Lucene BM25, stemming, stopwords, persistence, mining."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from jrr_pipeline.ml import sparse
from jrr_pipeline.ml.sparse import (
    BM25Index,
    BM25IndexError,
    BM25IndexSettings,
    corpus_texts,
    mine_negatives,
    run_from_search,
)

PLAIN = BM25IndexSettings(k1=1.2, b=0.75, stemmer="", stopwords="")

DOCS = {
    "d1": "Quantum entanglement links particles across distance",
    "d2": "The dog runs in the park every morning",
    "d3": "Bread recipes need flour water and yeast",
    "d4": "Stock markets fell sharply on inflation fears",
    "d5": "Entanglement of photons was measured in the lab",
    "d6": "The the the the of of and and a cat",
}


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.build(list(DOCS), list(DOCS.values()))


def test_obvious_top_document_and_output_shape(index: BM25Index) -> None:
    docs, scores = index.search(["quantum entanglement", "bread yeast flour"], k=3)
    assert docs[0][0] == "d1" and docs[1][0] == "d3"
    assert docs[0][1] == "d5"  # shares "entanglement" only
    assert scores.dtype == np.float32 and scores.shape == (2, 3)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # k larger than the corpus is clipped to the corpus size
    docs, scores = index.search(["bread"], k=50)
    assert scores.shape == (1, len(DOCS)) and sorted(docs[0]) == sorted(DOCS)


def test_scores_match_hand_computed_lucene_bm25() -> None:
    # dl = 3, 2, 4 tokens; avgdl = 3; N = 3; Lucene idf = ln(1 + (N - df + .5) / (df + .5))
    idx = BM25Index.build(
        ["a", "b", "c"], ["apple banana apple", "banana cherry", "cherry date elder figs"], PLAIN
    )
    docs, scores = idx.search(["apple", "banana"], k=3)
    k1, b = 1.2, 0.75
    idf_apple = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    assert docs[0][0] == "a"
    assert scores[0, 0] == pytest.approx(idf_apple * 2 / (2 + k1 * (1 - b + b * 3 / 3)), rel=1e-5)
    assert scores[0, 1] == 0.0
    idf_banana = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    # the shorter document wins on equal tf (length normalisation)
    assert docs[1][:2] == ["b", "a"]
    assert scores[1, 0] == pytest.approx(idf_banana / (1 + k1 * (1 - b + b * 2 / 3)), rel=1e-5)
    assert scores[1, 1] == pytest.approx(idf_banana / (1 + k1 * (1 - b + b * 3 / 3)), rel=1e-5)


def test_stemming_matches_inflected_forms(index: BM25Index) -> None:
    docs, scores = index.search(["running"], k=2)
    assert docs[0][0] == "d2" and scores[0, 0] > 0 and scores[0, 1] == 0
    unstemmed = BM25Index.build(list(DOCS), list(DOCS.values()), BM25IndexSettings(stemmer=""))
    _, scores = unstemmed.search(["running"], k=2)
    assert np.all(scores == 0)


def test_stopwords_are_ignored(index: BM25Index) -> None:
    _, scores = index.search(["the of and"], k=3)
    assert np.all(scores == 0)
    docs_a, scores_a = index.search(["the cat"], k=3)
    docs_b, scores_b = index.search(["cat"], k=3)
    assert docs_a == docs_b and np.array_equal(scores_a, scores_b) and docs_a[0][0] == "d6"
    # without stopword removal "the" counts and d6 (four "the") ranks first for it
    no_stop = BM25Index.build(list(DOCS), list(DOCS.values()), BM25IndexSettings(stopwords=""))
    docs, scores = no_stop.search(["the"], k=2)
    assert docs[0][0] == "d6" and scores[0, 0] > scores[0, 1] > 0


def test_ties_break_by_corpus_order_and_threads_agree() -> None:
    idx = BM25Index.build(["c", "a", "b", "z"], ["apple pie", "apple pie", "apple pie", "kiwi"])
    docs, scores = idx.search(["apple"], k=2)
    assert docs == [["c", "a"]] and scores[0, 0] == scores[0, 1] > 0
    queries = ["apple", "kiwi", "pie apple", "nothing here"] * 10
    one = idx.search(queries, k=3, n_threads=1)
    two = idx.search(queries, k=3, n_threads=2)
    assert one[0] == two[0] and np.array_equal(one[1], two[1])


def test_build_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 doc ids but 1 texts"):
        BM25Index.build(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="duplicate doc id 'a' at position 2"):
        BM25Index.build(["a", "b", "a"], ["x y", "y z", "z w"])
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build([], [])
    with pytest.raises(ValueError, match="bm25_index.stemmer = .klingon.: not a PyStemmer"):
        BM25IndexSettings(stemmer="klingon")


def test_save_load_round_trip(index: BM25Index, tmp_path: Path) -> None:
    target = tmp_path / "bm25"
    index.save(target)
    loaded = BM25Index.load(target)
    assert loaded.num_docs == index.num_docs == len(DOCS)
    assert loaded.config == index.config and loaded.doc_ids == list(DOCS)
    queries = ["quantum entanglement", "running dog", "markets", "the"]
    before, after = index.search(queries, k=4), loaded.search(queries, k=4)
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_save_replaces_atomically_and_survives_a_failed_write(
    index: BM25Index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "bm25"
    index.save(target)
    other = BM25Index.build(["x1", "x2"], ["bread flour", "quantum stock"])
    real_write = sparse._write_json

    def failing_write(path: Path, obj: object) -> None:
        if path.name == sparse.CONFIG_FILE:  # after the arrays and doc ids are on disk
            raise OSError("disk full (injected)")
        real_write(path, obj)

    monkeypatch.setattr(sparse, "_write_json", failing_write)
    with pytest.raises(OSError, match="injected"):
        other.save(target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]  # temp dir cleaned up
    kept = BM25Index.load(target)
    assert kept.doc_ids == list(DOCS)
    assert kept.search(["quantum"], k=1)[0] == [["d1"]]
    other.save(target)  # a successful save replaces the old index
    assert BM25Index.load(target).doc_ids == ["x1", "x2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]


def test_load_errors_name_the_file(index: BM25Index, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BM25Index.load(tmp_path / "nowhere")
    target = tmp_path / "bm25"
    index.save(target)
    (target / sparse.DOC_IDS_FILE).write_text('["d1", "d2"]')
    with pytest.raises(BM25IndexError, match=r"doc_ids\.json: expected a list of 6 doc ids"):
        BM25Index.load(target)
    (target / sparse.DOC_IDS_FILE).write_text("{not json")
    with pytest.raises(BM25IndexError, match=r"doc_ids\.json: not valid JSON"):
        BM25Index.load(target)
    index.save(target)
    (target / "indptr.csc.index.npy").write_bytes(b"garbage")
    with pytest.raises(BM25IndexError, match="bm25s arrays unreadable"):
        BM25Index.load(target)
    index.save(target)
    (target / sparse.CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=sparse.CONFIG_FILE):
        BM25Index.load(target)
    # a crash between the two renames of a replacing save leaves only .<dir>.old-*: say so
    index.save(target)
    target.rename(tmp_path / ".bm25.old-1a2b3c4d")
    with pytest.raises(FileNotFoundError, match=r"previous index survives at .*\.bm25\.old-1a2b3c4d"):
        BM25Index.load(target)


def test_corpus_texts_joins_title_and_text() -> None:
    corpus = pl.DataFrame(
        {"doc_id": ["a", "b"], "title": ["Title A", ""], "text": ["body a", "body b"]}
    )
    assert corpus_texts(corpus) == ["Title A body a", "body b"]
    assert corpus_texts(corpus, include_title=False) == ["body a", "body b"]
    assert corpus_texts(corpus.drop("title")) == ["body a", "body b"]


def test_run_from_search() -> None:
    run = run_from_search(
        ["q1", "q2"], [["a", "b"], ["c", "a"]], np.array([[2.0, 1.0], [3.5, 0.5]], dtype=np.float32)
    )
    assert run == {"q1": {"a": 2.0, "b": 1.0}, "q2": {"c": 3.5, "a": 0.5}}
    with pytest.raises(ValueError, match="2 query ids, 1 doc lists"):
        run_from_search(["q1", "q2"], [["a"]], np.zeros((1, 1)))


def _mining_data() -> tuple[pl.DataFrame, pl.DataFrame]:
    queries = pl.DataFrame(
        {
            "query_id": ["q1", "q2", "q3", "q4"],
            "text": ["entanglement of particles", "dog running", "bread flour", "stock markets"],
        }
    )
    qrels = pl.DataFrame(
        {
            "query_id": ["q1", "q1", "q2", "q3", "q4"],
            "doc_id": ["d1", "d5", "d2", "d3", "d4"],
            "relevance": [1, 0, 2, 1, 1],
            "split": ["train", "train", "train", "test", "dev"],
        },
        schema_overrides={"relevance": pl.Int32},
    )
    return queries, qrels


def test_mine_negatives(index: BM25Index) -> None:
    queries, qrels = _mining_data()
    neg = mine_negatives(index, queries, qrels, k=3)
    assert neg.schema == pl.Schema(sparse.NEGATIVES_SCHEMA)
    assert set(neg["query_id"]) == {"q1", "q2"}  # only train queries
    assert neg["source"].unique().to_list() == ["bm25"]
    assert neg.equals(neg.sort(["query_id", "rank"]))
    positives = {("q1", "d1"), ("q2", "d2")}
    assert not positives & set(zip(neg["query_id"], neg["doc_id"], strict=True))
    # d5 is judged but not relevant (relevance 0), so it stays a negative
    assert ("q1", "d5") in set(zip(neg["query_id"], neg["doc_id"], strict=True))
    # ranks and scores are those of the original BM25 list
    for qid, text in [("q1", "entanglement of particles"), ("q2", "dog running")]:
        docs, scores = index.search([text], k=3)
        rows = neg.filter(pl.col("query_id") == qid)
        expected = [
            (r + 1, d, float(s))
            for r, (d, s) in enumerate(zip(docs[0], scores[0], strict=True))
            if (qid, d) not in positives
        ]
        assert list(zip(rows["rank"], rows["doc_id"], rows["score"], strict=True)) == expected
        assert rows.height == 2  # k=3 minus the one positive in the top 3
    assert mine_negatives(index, queries, qrels, k=5, split="dev")["rank"].max() == 5
    assert mine_negatives(index, queries, qrels, split="nosuch").height == 0


def test_mine_negatives_requires_query_texts(index: BM25Index) -> None:
    queries, qrels = _mining_data()
    with pytest.raises(ValueError, match=r"missing from queries, e\.g\. \['q2'\]"):
        mine_negatives(index, queries.filter(pl.col("query_id") != "q2"), qrels)


def test_saved_config_is_json(index: BM25Index, tmp_path: Path) -> None:
    index.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / sparse.CONFIG_FILE).read_text())
    assert meta["num_docs"] == 6 and meta["config"]["k1"] == index.config.k1
