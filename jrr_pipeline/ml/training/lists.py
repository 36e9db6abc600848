"""Candidate lists shared by RocketQAv2 and AR2: building them from the ``candidates`` table,
scoring them with either model, and the joint run's starting point and saved pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import score_matrix
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
                          list_length: int) -> list[CandidateList]:
    """One list per labelled positive (``source`` 'qrels') of each query of ``candidates``: that
    positive, then the query's label-0 rows in table order, cut to ``list_length``. Lists that
    come out shorter are dropped (batched losses need equal lengths). Pseudo positives (label 1
    from denoising) get no list of their own but are masked like the labelled ones."""
    text = text_by_id(queries)
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    lists = []
    ordered = candidates.with_row_index("row").sort("query_id", "row")
    for (qid,), group in ordered.group_by(["query_id"], maintain_order=True):
        labelled = group.filter((pl.col("label") == 1) & (pl.col("source") == "qrels"))
        positive_ids = frozenset(group.filter(pl.col("label") == 1)["doc_id"].to_list())
        negatives = group.filter(pl.col("label") == 0)["doc_id"].to_list()
        for positive in labelled["doc_id"].to_list():
            docs = [positive, *negatives][:list_length]
            if len(docs) == list_length:
                lists.append(CandidateList(text[qid], tuple(passages[d] for d in docs), qid,
                                           tuple(docs), positive_ids))
    return lists


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
    from jrr_pipeline.ml.training.loop import seed_everything

    settings = spec.settings
    tables = spec.tables()
    lists = build_candidate_lists(tables["queries"], tables["corpus"], tables["candidates"],
                                  settings.list_length)
    if not lists:
        raise ValueError(f"{spec.data['candidates']}: no query has a positive and "
                         f"{settings.list_length - 1} negatives (list_length "
                         f"{settings.list_length})")
    seed_everything(settings.seed)
    retriever = DenseRetriever.from_pretrained(spec.models["retriever"])
    reranker = CrossEncoderReranker.from_pretrained(spec.models["reranker"])
    retriever.config.passage_max_length = settings.passage_max_length
    reranker.config.max_length = settings.reranker_max_length
    return tables, lists, retriever, reranker


def serving_fields(settings) -> dict:
    """Retriever config fields the saved joint checkpoint gets instead of the training ones."""
    length = settings.index_passage_max_length
    return {"passage_max_length": length} if length else {}
