"""Warm-up training examples: one per (query, labelled positive), with hard negatives drawn from
the query's retrieved candidates by a named sampler (``ml.sampling``), topped up with random
corpus documents so every example has the same count.

``negative_pools`` gathers what every strategy draws from (the pairs, each query's candidate
pool with its scores, the texts); ``build_retrieval_examples`` draws each pair's negatives once;
TAS-Balanced (``ml.training.tas_examples``) draws them per margin bin from the same pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from jrr_pipeline.ml.sampling import Candidate, negative_picker, sampler_spec
from jrr_pipeline.ml.text import passage_texts, text_by_id


@dataclass
class RetrievalExample:
    """One training query with one positive passage and its hard negatives (passage texts), and
    their ids: ``positive_ids`` holds every labelled positive of the query, so the in-batch loss
    never counts one of them (or a copy of the positive) as a negative."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    query_id: str = ""
    positive_id: str = ""
    negative_ids: list[str] = field(default_factory=list)
    positive_ids: frozenset[str] = frozenset()

    def passage_keys(self) -> list[str]:
        """Ids of [positive, *negatives] (their texts when the example carries no ids)."""
        if self.positive_id:
            return [self.positive_id, *self.negative_ids]
        return [self.positive, *self.negatives]

    def positive_keys(self) -> frozenset[str]:
        return self.positive_ids | {self.passage_keys()[0]}


def _require_columns(df: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"table '{table}': field '{missing[0]}': missing column (has {', '.join(df.columns)})"
        )


@dataclass
class NegativePools:
    """What the warm-up's examples are drawn from: the sorted (query, positive) pairs of a split,
    every query's labelled positives (any split), its candidate negatives in rank order (with the
    ``score`` / ``ce_prob`` a sampler reads) and the positive's score where the rows carry one."""

    pairs: list[tuple[str, str]]
    positives_of: dict[str, set[str]]
    pools: dict[str, list[Candidate]]
    positive_score: dict[str, float]
    query_text: dict[str, str]
    doc_ids: list[str]
    texts: list[str]
    doc_index: dict[str, int]

    def example(self, qid: str, positive: str, negative_ids: list[str]) -> RetrievalExample:
        return RetrievalExample(
            query=self.query_text[qid], positive=self.texts[self.doc_index[positive]],
            negatives=[self.texts[self.doc_index[d]] for d in negative_ids], query_id=qid,
            positive_id=positive, negative_ids=list(negative_ids),
            positive_ids=frozenset(self.positives_of[qid]))

    def top_up(self, rng: np.random.Generator, qid: str, chosen: list[str], n: int) -> list[str]:
        """``chosen`` plus random corpus documents (never a positive or a repeat) up to ``n``."""
        if len(chosen) >= n:
            return chosen
        return chosen + _random_docs(rng, self.doc_ids, n - len(chosen),
                                     self.positives_of[qid] | set(chosen), qid)


def negative_pools(queries: pl.DataFrame, corpus: pl.DataFrame, qrels: pl.DataFrame,
                   negatives: pl.DataFrame, split: str = "train", source: str | None = None,
                   rank_window: tuple[int, int] = (1, 100)) -> NegativePools:
    """The pairs and pools of ``build_retrieval_examples`` (its checks and rules)."""
    if rank_window[0] > rank_window[1]:
        raise ValueError(f"rank_window {rank_window}: start is after end")
    _require_columns(queries, "queries", ("query_id", "text"))
    _require_columns(corpus, "corpus", ("doc_id", "text"))
    _require_columns(qrels, "qrels", ("query_id", "doc_id", "relevance", "split"))
    _require_columns(
        negatives, "negatives", ("query_id", "doc_id", "rank") + (("source",) if source else ())
    )
    query_text = text_by_id(queries)
    doc_ids = corpus["doc_id"].to_list()
    doc_index = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    positives_of, pairs = _labelled_pairs(qrels, split, query_text, doc_index)
    window = _window_negatives(negatives, rank_window, source, [q for q, _ in pairs], doc_ids)
    pools, positive_score = _candidate_pools(window, positives_of)
    return NegativePools(pairs, positives_of, pools, positive_score, query_text, doc_ids,
                         passage_texts(corpus), doc_index)


def build_retrieval_examples(
    queries: pl.DataFrame,
    corpus: pl.DataFrame,
    qrels: pl.DataFrame,
    negatives: pl.DataFrame,
    n_negatives: int,
    seed: int,
    split: str = "train",
    source: str | None = None,
    rank_window: tuple[int, int] = (1, 100),
    sampler: dict | None = None,
) -> list[RetrievalExample]:
    """One example per (query, positive doc) of `split` with relevance > 0, sorted by ids.

    Negatives are drawn without replacement from the query's rows of `negatives` whose rank lies
    in `rank_window` (inclusive) and, if given, whose source equals `source`; labelled positives
    of the query (any split) are never negatives. When a query has fewer than `n_negatives`
    such rows, the rest are random corpus documents (so every example has exactly
    `n_negatives`, which the batched losses need). Deterministic for a given `seed`.
    Passages are "title text".

    ``sampler`` (``{"name": "simans", "a": 1.0, "b": 0.0}`` etc., see ``ml.sampling.sampler_spec``;
    None = uniform over ``rank_window``) draws from that pool: each candidate carries the
    ``score`` and ``ce_prob`` columns of ``negatives`` when present, and SimANS reads the
    positive's score from a ``positive_score`` column (one value per query).
    """
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
    data = negative_pools(queries, corpus, qrels, negatives, split, source, rank_window)
    return draw_examples(data, n_negatives, seed,
                         sampler or sampler_spec("uniform", rank_window=rank_window))


def draw_examples(data: NegativePools, n_negatives: int, seed: int,
                  sampler: dict) -> list[RetrievalExample]:
    """One example per pair of ``data``, its ``n_negatives`` drawn by ``sampler`` (a
    ``sampler_spec``) from its query's pool, then topped up with random documents."""
    pick = negative_picker(sampler)
    rng = np.random.default_rng(seed)
    examples: list[RetrievalExample] = []
    for qid, pos in data.pairs:
        chosen = pick(data.pools.get(qid, []), n_negatives, rng, data.positive_score.get(qid))
        examples.append(data.example(qid, pos, data.top_up(rng, qid, chosen, n_negatives)))
    return examples


def _labelled_pairs(qrels: pl.DataFrame, split: str, query_text: dict[str, str],
                    doc_index: dict[str, int]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Every query's positives (any split) and the sorted (query, positive) pairs of ``split``;
    an unknown query or doc id among the positives is an error naming its qrels row."""
    relevant = qrels.with_row_index("row").filter(pl.col("relevance") > 0)
    for table, column, known in (("qrels", "query_id", query_text), ("qrels", "doc_id", doc_index)):
        bad = relevant.filter(~pl.col(column).is_in(list(known)))
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"table '{table}' row {row['row']}: field '{column}': unknown id {row[column]!r}"
            )
    positives_of: dict[str, set[str]] = {}
    for qid, did in relevant.select("query_id", "doc_id").iter_rows():
        positives_of.setdefault(qid, set()).add(did)
    pairs = (
        relevant.filter(pl.col("split") == split)
        .select("query_id", "doc_id").unique().sort("query_id", "doc_id").rows()
    )
    return positives_of, pairs


def _window_negatives(negatives: pl.DataFrame, rank_window: tuple[int, int], source: str | None,
                      query_ids: list[str], doc_ids: list[str]) -> pl.DataFrame:
    """The rows of ``negatives`` in the rank window (and source) of the given queries."""
    neg = negatives.filter(pl.col("rank").is_between(*rank_window))
    if source is not None:
        neg = neg.filter(pl.col("source") == source)
    neg = neg.filter(pl.col("query_id").is_in(query_ids))
    unknown = neg.filter(~pl.col("doc_id").is_in(doc_ids))
    if unknown.height:
        raise ValueError(
            f"table 'negatives': field 'doc_id': unknown id {unknown['doc_id'][0]!r} "
            f"(query {unknown['query_id'][0]!r})"
        )
    return neg


def _candidate_pools(neg: pl.DataFrame, positives_of: dict[str, set[str]]
                     ) -> tuple[dict[str, list[Candidate]], dict[str, float]]:
    """Per query, its negative rows as candidates in rank order (best rank of a doc found several
    times; labelled positives left out), and the positive's score where the rows carry one."""
    optional = [c for c in ("score", "ce_prob", "positive_score") if c in neg.columns]
    grouped = (
        neg.group_by("query_id", "doc_id")
        .agg(pl.col("rank").min(), *(pl.col(c).max() for c in optional))
        .sort("query_id", "rank", "doc_id")
    )

    def column(name: str) -> list:
        return grouped[name].to_list() if name in grouped.columns else [None] * grouped.height

    pools: dict[str, list[Candidate]] = {}
    positive_score: dict[str, float] = {}
    for qid, did, rank, score, ce_prob, pos_score in zip(
            *(column(c) for c in ("query_id", "doc_id", "rank", "score", "ce_prob",
                                  "positive_score")), strict=True):
        if pos_score is not None:
            positive_score[qid] = float(pos_score)
        if did not in positives_of.get(qid, ()):
            pools.setdefault(qid, []).append(Candidate(did, int(rank), float(score or 0.0), "",
                                                       ce_prob))
    return pools, positive_score


def _random_docs(
    rng: np.random.Generator, doc_ids: list[str], count: int, exclude: set[str], qid: str
) -> list[str]:
    # every excluded id is a known corpus id (validated by the caller)
    if len(doc_ids) - len(exclude) < count:
        raise ValueError(
            f"query {qid!r}: the corpus has too few documents to draw {count} random negatives"
        )
    picked: list[str] = []
    taken = set(exclude)
    while len(picked) < count:
        doc = doc_ids[int(rng.integers(len(doc_ids)))]
        if doc not in taken:
            taken.add(doc)
            picked.append(doc)
    return picked
