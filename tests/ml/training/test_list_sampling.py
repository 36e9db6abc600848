"""The joint lists' ``sampler``: uniform keeps the table's own draw, denoised drops what the
warm-up reranker doubts (relative to the best positive), SimANS reads the warm-up retriever's
dense scores."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig
from jrr_pipeline.ml.settings import JointSettings
from jrr_pipeline.ml.training.lists import build_candidate_lists, score_candidates

QUERIES = pl.DataFrame({"query_id": ["q1"], "text": ["apple river"]})
CORPUS = pl.DataFrame({"doc_id": [f"d{i}" for i in range(7)], "title": [""] * 7,
                       "text": ["apple river apple", "music window", "garden doctor",
                                "apple music", "river planet", "winter coffee", "apple bridge"]})
# q1's positive d0 (logit 2), then six negatives in table order with these reranker logits
LOGITS = [3.0, -5.0, 1.5, -4.0, -3.0, 0.0]
CANDIDATES = pl.DataFrame({
    "query_id": ["q1"] * 7, "doc_id": ["d0"] + [f"d{i}" for i in range(1, 7)],
    "label": [1] + [0] * 6, "source": ["qrels"] + ["raw:bm25"] * 6,
    "ce_score": [2.0, *LOGITS]})


def docs(lists) -> list[tuple[str, ...]]:
    return [x.doc_ids for x in lists]


def test_uniform_keeps_the_tables_first_rows():
    assert JointSettings().sampler_spec() is None
    assert docs(build_candidate_lists(QUERIES, CORPUS, CANDIDATES, 4)) == [
        ("d0", "d1", "d2", "d3")]


def test_denoised_drops_what_the_reranker_doubts_then_tops_up_in_table_order():
    probs = [1 / (1 + math.exp(-(s - 2.0))) for s in LOGITS]
    clean = {f"d{i + 1}" for i, p in enumerate(probs) if p < 0.1}
    assert clean == {"d2", "d4", "d5"}
    spec = JointSettings(sampler="denoised", denoised_tau_neg=0.1).sampler_spec()
    scored = score_candidates(CANDIDATES, "denoised", None, QUERIES, CORPUS)
    assert scored["ce_prob"][1:].to_list() == [float(np.float64(p)) for p in probs]
    (four,) = build_candidate_lists(QUERIES, CORPUS, scored, 4, spec, seed=0)
    assert set(four.doc_ids[1:]) == clean
    (five,) = build_candidate_lists(QUERIES, CORPUS, scored, 5, spec, seed=0)
    assert set(five.doc_ids[1:4]) == clean and five.doc_ids[4] == "d1"  # first doubted row


def test_simans_reads_the_starting_retrievers_scores(tiny_model_dir):
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=16))
    scored = score_candidates(CANDIDATES, "simans", retriever, QUERIES, CORPUS)
    q = retriever.embed(["apple river"], "query")[0].astype(np.float64)
    p = retriever.embed(CORPUS["text"].to_list(), "passage").astype(np.float64)
    expected = p @ q / retriever.config.temperature
    assert np.allclose(scored["score"].to_numpy(), expected, atol=1e-5)
    assert np.allclose(scored["positive_score"].to_numpy(), expected[0], atol=1e-5)
    gaps = np.abs(expected[1:] - expected[0])
    nearest = {f"d{i + 1}" for i in np.argsort(gaps)[:2]}
    spec = JointSettings(sampler="simans", simans_a=1e4).sampler_spec()
    assert np.sort(gaps ** 2)[2] - np.sort(gaps ** 2)[1] > 1e-3  # a clear top two: at a = 1e4
    (lst,) = build_candidate_lists(QUERIES, CORPUS, scored, 3, spec, seed=1)  # they take it all
    assert set(lst.doc_ids[1:]) == nearest
    draws = {build_candidate_lists(QUERIES, CORPUS, scored, 3,
                                   JointSettings(sampler="simans", simans_a=1e-3).sampler_spec(),
                                   seed=s)[0].doc_ids for s in range(20)}
    assert len(draws) > 1  # a flat SimANS is a random draw, seeded
