"""Candidate lists shared by RocketQAv2 and AR2: building them from the ``candidates`` table,
scoring them with either model, and the joint run's starting point and saved pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import score_matrix
from jrr_pipeline.ml.sampling import Candidate, negative_picker
from jrr_pipeline.ml.text import passage_texts, text_by_id


@dataclass(frozen=True)
class CandidateList:
    """A query and its list, one labelled positive first (ids kept for refreshes and reports).
    ``positive_ids`` holds all of the query's labelled and pseudo positives: none of them may
    count as a negative of this list in the batch."""

    query: str
    passages: tuple[str, ...]
    query_id: str = ""
    doc_ids: tuple[str, ...] = ()
    positive_ids: frozenset[str] = frozenset()

    def passage_keys(self) -> tuple[str, ...]:
        """Doc ids of the list (the texts when the list carries no ids)."""
        return self.doc_ids or self.passages

    def positive_keys(self) -> frozenset[str]:
        return self.positive_ids | {self.passage_keys()[0]}


def build_candidate_lists(queries: pl.DataFrame, corpus: pl.DataFrame, candidates: pl.DataFrame,
                          list_length: int, sampler: dict | None = None,
                          seed: int = 0) -> list[CandidateList]:
    """One list per labelled positive (``source`` 'qrels') of each query of ``candidates``: that
    positive, then ``list_length - 1`` of the query's label-0 rows. Lists that come out shorter
    are dropped (batched losses need equal lengths). Pseudo positives (label 1 from denoising)
    get no list of their own but are masked like the labelled ones.

    Without ``sampler`` the negatives are the first rows in table order (the table's own uniform
    draw). A ``sampler`` (``ml.sampling.sampler_spec``) draws them instead (seeded by ``seed``)
    from all of the query's label-0 rows, ranked in table order, reading their ``score`` /
    ``ce_prob`` columns and the query's ``positive_score`` (``score_candidates``); a short draw
    is topped up with the remaining rows in table order."""
    text = text_by_id(queries)
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    pick = negative_picker(sampler) if sampler else None
    rng = np.random.default_rng(seed)
    lists = []
    ordered = candidates.with_row_index("row").sort("query_id", "row")
    for (qid,), group in ordered.group_by(["query_id"], maintain_order=True):
        labelled = group.filter((pl.col("label") == 1) & (pl.col("source") == "qrels"))
        positive_ids = frozenset(group.filter(pl.col("label") == 1)["doc_id"].to_list())
        rows = group.filter(pl.col("label") == 0)
        negatives = rows["doc_id"].to_list()
        pool = _candidates(rows) if pick else []
        for positive in labelled["doc_id"].to_list():
            if pick is None:
                docs = [positive, *negatives][:list_length]
            else:
                picked = pick(pool, list_length - 1, rng, _first(group, "positive_score"))
                rest = [d for d in negatives if d not in set(picked)]
                docs = [positive, *picked, *rest][:list_length]
            if len(docs) == list_length:
                lists.append(CandidateList(text[qid], tuple(passages[d] for d in docs), qid,
                                           tuple(docs), positive_ids))
    return lists


def _candidates(rows: pl.DataFrame) -> list[Candidate]:
    """A query's label-0 rows as sampler candidates, ranked in table order."""
    def column(name: str) -> list:
        return rows[name].to_list() if name in rows.columns else [None] * rows.height

    return [Candidate(doc, rank, float(score or 0.0), "", prob) for rank, (doc, score, prob)
            in enumerate(zip(rows["doc_id"].to_list(), column("score"), column("ce_prob"),
                             strict=True), start=1)]


def _first(group: pl.DataFrame, name: str) -> float | None:
    return group[name][0] if name in group.columns else None


def score_candidates(candidates: pl.DataFrame, sampler: str, retriever: DenseRetriever,
                     queries: pl.DataFrame, corpus: pl.DataFrame,
                     autocast_dtype: torch.dtype | None = None) -> pl.DataFrame:
    """``candidates`` with what ``sampler`` reads (``ml.training.scoring``): for simans the
    retriever's ``score`` of every row and each query's ``positive_score`` (its best labelled
    positive's); for denoised ``ce_prob`` = sigmoid(ce_score - the best labelled positive's)."""
    from jrr_pipeline.ml.training.scoring import dense_pair_scores, relative_probabilities

    pairs = list(candidates.select("query_id", "doc_id").iter_rows())
    positive = (pl.col("label") == 1) & (pl.col("source") == "qrels")
    positives = list(candidates.filter(positive).select("query_id", "doc_id").iter_rows())
    if sampler == "simans":
        passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
        scores = dense_pair_scores(retriever, text_by_id(queries), passages, sorted(set(pairs)),
                                   autocast_dtype=autocast_dtype)
        lookup = dict(zip(sorted(set(pairs)), scores.tolist(), strict=True))
        frame = candidates.with_columns(score=pl.Series([lookup[p] for p in pairs],
                                                        dtype=pl.Float64))
        best = pl.when(positive).then(pl.col("score")).otherwise(None).max().over("query_id")
        return frame.with_columns(positive_score=best)
    if sampler == "denoised":
        prob = relative_probabilities(
            dict(zip(pairs, candidates["ce_score"].cast(pl.Float64).to_list(), strict=True)),
            positives)
        return candidates.with_columns(ce_prob=pl.Series([prob.get(p) for p in pairs],
                                                         dtype=pl.Float64))
    return candidates


def _list_length(batch: Sequence[CandidateList], owner: str) -> int:
    size = {len(x.passages) for x in batch}
    if len(size) != 1:
        raise ValueError(f"{owner}: lists of different lengths in one batch: {sorted(size)}")
    return size.pop()


def retriever_batch_scores(retriever: DenseRetriever, batch: Sequence[CandidateList]) -> Tensor:
    """s_de of every query against every passage of the batch, [B, B*L]: query i's own list is
    columns i*L .. i*L+L-1 (``own_list_scores`` cuts them out)."""
    _list_length(batch, "retriever_batch_scores")
    q = retriever.encode_queries(retriever.tokenize_queries([x.query for x in batch]))
    p = retriever.encode_passages(retriever.tokenize_passages([t for x in batch for t in x.passages]))
    return score_matrix(q, p, 1.0 / retriever.config.temperature)


def own_list_scores(s_all: Tensor, length: int) -> Tensor:
    """[B, B*L] batch scores -> [B, L], each query's scores over its own list."""
    b = s_all.shape[0]
    rows = torch.arange(b, device=s_all.device)
    return s_all.view(b, b, length)[rows, rows]


def retriever_list_scores(retriever: DenseRetriever, batch: Sequence[CandidateList]) -> Tensor:
    """s_de over each query's own list, [B, L]."""
    return own_list_scores(retriever_batch_scores(retriever, batch), len(batch[0].passages))


def in_batch_positive_mask(batch: Sequence[CandidateList]) -> Tensor:
    """[B, B*L] True where a column of the batch holds one of query i's labelled or pseudo
    positives (by doc id; by text when ids are missing) other than its own list's positive:
    those columns must not count as its negatives."""
    flat = [k for x in batch for k in x.passage_keys()]
    mask = torch.tensor([[other in x.positive_keys() for other in flat] for x in batch],
                        dtype=torch.bool)
    rows = torch.arange(len(batch))
    mask[rows, rows * len(batch[0].passage_keys())] = False
    return mask


def reranker_list_scores(reranker: CrossEncoderReranker, batch: Sequence[CandidateList],
                         chunk_pairs: int = 0) -> Tensor:
    """s_ce of every (query, passage) pair of each list, [B, L]; ``chunk_pairs`` > 0 runs the
    cross-encoder over that many pairs at a time (same result, smaller activation peak at
    inference; with a graph the chunks' activations are all kept until backward)."""
    length = _list_length(batch, "reranker_list_scores")
    pairs_q = [x.query for x in batch for _ in x.passages]
    pairs_p = [t for x in batch for t in x.passages]
    size = chunk_pairs if chunk_pairs > 0 else len(pairs_q)
    parts = [reranker(reranker.tokenize(pairs_q[i:i + size], pairs_p[i:i + size]))
             for i in range(0, len(pairs_q), size)]
    return torch.cat(parts).view(len(batch), length)


def save_pair(retriever: DenseRetriever, reranker: CrossEncoderReranker, output_dir: Path,
              serving: dict | None = None) -> None:
    """``output_dir/retriever`` (with the ``serving`` config overrides) and ``output_dir/reranker``."""
    from jrr_pipeline.ml.training.warmup import config_overrides

    output_dir.mkdir(parents=True)
    with config_overrides(retriever.config, dict(serving or {})):
        retriever.save_pretrained(output_dir / "retriever")
    reranker.save_pretrained(output_dir / "reranker")


def prepare_joint(spec) -> tuple[dict[str, pl.DataFrame], list[CandidateList], DenseRetriever,
                                 CrossEncoderReranker]:
    """Tables, candidate lists and the two starting models of a joint run file
    (``ml.training.launch.RunSpec``), with the settings' training lengths applied."""
    from jrr_pipeline.ml.precision import autocast_dtype, use_bf16
    from jrr_pipeline.ml.training.loop import seed_everything

    settings = spec.settings
    tables = spec.tables()
    seed_everything(settings.seed)
    retriever = DenseRetriever.from_pretrained(spec.models["retriever"])
    reranker = CrossEncoderReranker.from_pretrained(spec.models["reranker"])
    retriever.config.passage_max_length = settings.passage_max_length
    reranker.config.max_length = settings.reranker_max_length
    sampler = settings.sampler_spec()
    candidates = tables["candidates"]
    if sampler is not None:  # what the sampler reads (SimANS: the starting retriever's scores)
        dtype = autocast_dtype(use_bf16(settings.bf16, retriever.device))
        candidates = score_candidates(candidates, settings.sampler, retriever, tables["queries"],
                                      tables["corpus"], dtype)
    lists = build_candidate_lists(tables["queries"], tables["corpus"], candidates,
                                  settings.list_length, sampler, settings.seed)
    if not lists:
        raise ValueError(f"{spec.data['candidates']}: no query has a positive and "
                         f"{settings.list_length - 1} negatives (list_length "
                         f"{settings.list_length})")
    return tables, lists, retriever, reranker


def serving_fields(settings) -> dict:
    """Retriever config fields the saved joint checkpoint gets instead of the training ones."""
    length = settings.index_passage_max_length
    return {"passage_max_length": length} if length else {}
