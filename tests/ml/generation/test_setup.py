import polars as pl
import pytest

from jrr_pipeline.ml.generation.setup import final_documents, training_tables
from jrr_pipeline.ml.settings.generation import GenerationSettings

QUERIES = pl.DataFrame({"query_id": ["q1", "q2", "q3"], "text": ["a", "b", "c"]})
QRELS = pl.DataFrame({"query_id": ["q1", "q2", "q3"], "doc_id": ["d1", "d2", "d3"],
                      "relevance": [1, 1, 1], "split": ["train", "dev", "test"]},
                     schema_overrides={"relevance": pl.Int32})
GENERATED = pl.DataFrame({
    "query_id": ["gen-0-d1-0", "gen-final-d1-0", "gen-final-d2-0", "gen-final-d3-0"],
    "text": ["x", "alpha", "beta", " "], "doc_id": ["d1", "d1", "d2", "d3"],
    "round": [0, -1, -1, -1]})


def test_only_mode_reads_the_dataset_as_it_is():
    queries, qrels = training_tables("only", QUERIES, QRELS, None)
    assert queries.equals(QUERIES) and qrels.equals(QRELS)


def test_none_mode_trains_on_the_final_generated_queries_only():
    queries, qrels = training_tables("none", QUERIES, QRELS, GENERATED)
    train = qrels.filter(pl.col("split") == "train")
    assert train["query_id"].to_list() == ["gen-final-d1-0", "gen-final-d2-0"]  # no q1, no blank
    assert train["doc_id"].to_list() == ["d1", "d2"] and set(train["relevance"]) == {1}
    assert set(qrels.filter(pl.col("split") != "train")["query_id"]) == {"q2", "q3"}
    assert set(queries["query_id"]) == {"q1", "q2", "q3", "gen-final-d1-0", "gen-final-d2-0"}


def test_augment_mode_keeps_the_labels_and_caps_the_generated_share():
    queries, qrels = training_tables("augment", QUERIES, QRELS, GENERATED, augment_weight=1.0)
    train = qrels.filter(pl.col("split") == "train")["query_id"].to_list()
    assert "q1" in train and len(train) == 2  # one labelled train query: at most one generated
    _, more = training_tables("augment", QUERIES, QRELS, GENERATED, augment_weight=5.0)
    assert more.filter(pl.col("split") == "train").height == 3
    with pytest.raises(ValueError, match="generated_queries"):
        training_tables("none", QUERIES, QRELS, None)


def test_final_documents_is_a_seeded_sample_in_corpus_order():
    ids = [f"d{i}" for i in range(50)]
    picked = final_documents(GenerationSettings(final_documents=10, seed=1), ids)
    assert len(picked) == 10 and picked == sorted(picked, key=ids.index)
    assert picked == final_documents(GenerationSettings(final_documents=10, seed=1), ids)
    assert final_documents(GenerationSettings(final_documents=0), ids) == ids


def test_the_seq2seq_generator_needs_a_seq2seq_model():
    with pytest.raises(ValueError, match="generation.generator_model"):
        GenerationSettings(generator="seq2seq")
    assert GenerationSettings(generator="seq2seq", generator_model="t5-small").generator_model


def test_labelled_examples_draw_bm25_negatives_that_are_never_positives():
    from jrr_pipeline.ml.generation.setup import labelled_examples
    from jrr_pipeline.ml.sparse import BM25Index

    corpus = pl.DataFrame({"doc_id": [f"d{i}" for i in range(8)], "title": [""] * 8,
                           "text": ["insulin glucose", "insulin pancreas", "glucose liver",
                                    "malaria mosquito", "kidney renal", "bone calcium",
                                    "insulin resistance glucose", "sleep clock"]})
    queries = pl.DataFrame({"query_id": ["q1", "q2"], "text": ["insulin glucose", "malaria"]})
    qrels = pl.DataFrame({"query_id": ["q1", "q1", "q2"], "doc_id": ["d0", "d6", "d3"],
                          "relevance": [1, 1, 1], "split": ["train", "train", "test"]},
                         schema_overrides={"relevance": pl.Int32})
    bm25 = BM25Index.build(corpus["doc_id"].to_list(), corpus["text"].to_list())
    settings = GenerationSettings(n_negatives=2, negative_depth=5)
    examples = labelled_examples(settings, corpus, queries, qrels, bm25)
    assert sorted(e.positive_id for e in examples) == ["d0", "d6"]  # train only, every positive
    for example in examples:
        assert len(example.negative_ids) == 2
        assert not {"d0", "d6"} & set(example.negative_ids)
    assert examples == labelled_examples(settings, corpus, queries, qrels, bm25)
