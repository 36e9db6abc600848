"""The two warm-up tasks (DPR-style retriever, listwise reranker) and their training examples."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch import Tensor

from jrr_pipeline.ml.losses import InfoNCELoss, ListwiseCELoss
from jrr_pipeline.ml.losses.distributed import dist_ready
from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import score_matrix
from jrr_pipeline.ml.sampling import Candidate, build_sampler, sample_without_replacement
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


def positives_mask(batch: Sequence[RetrievalExample], column_keys: Sequence[str],
                   offset: int = 0) -> Tensor:
    """[B, len(column_keys)] True where a column holds one of query i's positives other than its
    own positive's column (``offset`` + i * (1 + n)): these are not negatives of query i."""
    group = 1 + _negative_count(batch)
    mask = torch.tensor([[key in example.positive_keys() for key in column_keys]
                         for example in batch], dtype=torch.bool)
    rows = torch.arange(len(batch))
    mask[rows, offset + rows * group] = False
    return mask


def _negative_count(batch: Sequence[RetrievalExample]) -> int:
    if not batch:
        raise ValueError("empty batch")
    counts = {len(example.negatives) for example in batch}
    if len(counts) != 1:
        raise ValueError(
            f"every example in a batch needs the same number of negatives, got {sorted(counts)}"
        )
    return counts.pop()


class RetrieverWarmupTask:
    """DPR warm-up: InfoNCE over the positive, the example's negatives and every other passage
    of the batch (in-batch), and of all DDP ranks when `cross_batch` (RocketQA cross-batch).
    A query's other labelled positives (and copies of its positive) in the batch are masked:
    one example per (query, positive), so every labelled positive is trained on."""

    def __init__(self, retriever: DenseRetriever, cross_batch: bool = True) -> None:
        self.retriever = retriever
        self.cross_batch = cross_batch
        self.loss_fn = InfoNCELoss(cross_batch=cross_batch)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The retriever (both towers when they are separate)."""
        return {"retriever": self.retriever}

    def loss(self, batch: list[RetrievalExample]) -> tuple[Tensor, dict[str, float]]:
        """InfoNCE loss of this rank's share of the batch, plus diagnostics.

        Metrics: `passages_in_logits` (columns of the logit matrix: world_size * local passages
        with cross-batch negatives under DDP) and `in_batch_acc` (share of local queries whose
        best-scoring local passage is their own positive).
        """
        n_neg = _negative_count(batch)
        retriever = self.retriever
        queries = retriever.tokenize_queries([example.query for example in batch])
        passages = retriever.tokenize_passages(
            [text for example in batch for text in (example.positive, *example.negatives)]
        )
        q = retriever.encode_queries(queries)
        p = retriever.encode_passages(passages)
        keys, offset = self._column_keys(batch)
        mask = positives_mask(batch, keys, offset)
        loss = self.loss_fn(q, p, 1.0 / retriever.config.temperature, mask=mask)
        with torch.no_grad():
            own = torch.arange(len(batch), device=q.device) * (1 + n_neg)
            local = score_matrix(q, p).masked_fill(
                mask[:, offset:offset + p.shape[0]].to(q.device), float("-inf"))
            acc = (torch.argmax(local, dim=1) == own).float().mean()
        metrics = {
            "passages_in_logits": float(self.loss_fn.last_num_passages),
            "in_batch_acc": float(acc),
            "masked_positives": float(mask.sum()) / len(batch),
        }
        return loss, metrics

    def _column_keys(self, batch: Sequence[RetrievalExample]) -> tuple[list[str], int]:
        """Keys of every column of the logits (all ranks' passages with cross-batch negatives
        under DDP) and where this rank's columns start."""
        local = [key for example in batch for key in example.passage_keys()]
        if not (self.cross_batch and dist_ready()):
            return local, 0
        gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, local)
        return [k for part in gathered for k in part], dist.get_rank() * len(local)

    serving: dict = {}

    def save(self, output_dir: Path) -> None:
        """HF / sentence-transformers folder of the retriever (with the ``serving`` config fields)."""
        with config_overrides(self.retriever.config, self.serving):
            self.retriever.save_pretrained(output_dir)


class RerankerWarmupTask:
    """Listwise warm-up of the cross-encoder: softmax CE over [positive, negatives...] per query."""

    def __init__(self, reranker: CrossEncoderReranker) -> None:
        self.reranker = reranker
        self.loss_fn = ListwiseCELoss()

    def modules(self) -> dict[str, torch.nn.Module]:
        """The reranker."""
        return {"reranker": self.reranker}

    def loss(self, batch: list[RetrievalExample]) -> tuple[Tensor, dict[str, float]]:
        """Listwise CE (positive at column 0) plus `list_acc` (positive ranked first) and
        `loss_prior` (log list length: the loss of a reranker that has learnt nothing)."""
        list_len = 1 + _negative_count(batch)
        queries = [example.query for example in batch for _ in range(list_len)]
        passages = [text for example in batch for text in (example.positive, *example.negatives)]
        scores = self.reranker(self.reranker.tokenize(queries, passages)).view(len(batch), list_len)
        loss = self.loss_fn(scores)
        with torch.no_grad():
            acc = (scores.argmax(dim=1) == 0).float().mean()
        return loss, {"list_acc": float(acc), "loss_prior": math.log(list_len)}

    serving: dict = {}

    def save(self, output_dir: Path) -> None:
        """HF folder of the reranker (loads with sentence_transformers.CrossEncoder)."""
        with config_overrides(self.reranker.config, self.serving):
            self.reranker.save_pretrained(output_dir)


@contextmanager
def config_overrides(config, values: dict) -> Iterator[None]:
    """Set ``values`` on a (mutable) model config dataclass for the block, then restore."""
    previous = {k: getattr(config, k) for k in values}
    for key, value in values.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            setattr(config, key, value)


def _require_columns(df: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"table '{table}': field '{missing[0]}': missing column (has {', '.join(df.columns)})"
        )


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

    ``sampler`` (``{"name": "simans", "a": 1.0, "b": 0.0}`` etc., see ``jrr_pipeline.ml.sampling``)
    replaces the uniform draw: the pool is the same rank window, each candidate carries the
    ``score`` and ``ce_prob`` columns of ``negatives`` when present, and SimANS reads the
    positive's score from a ``positive_score`` column (one value per query).
    """
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
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
    texts = passage_texts(corpus)
    positives_of, pairs = _labelled_pairs(qrels, split, query_text, doc_index)
    window = _window_negatives(negatives, rank_window, source, [q for q, _ in pairs], doc_ids)
    pools, positive_score = _candidate_pools(window, positives_of)
    pick = _negative_picker(sampler)

    rng = np.random.default_rng(seed)
    examples: list[RetrievalExample] = []
    for qid, pos in pairs:
        chosen = pick(pools.get(qid, []), n_negatives, rng, positive_score.get(qid))
        if len(chosen) < n_negatives:
            chosen += _random_docs(
                rng, doc_ids, n_negatives - len(chosen), positives_of[qid] | set(chosen), qid
            )
        examples.append(RetrievalExample(
            query=query_text[qid], positive=texts[doc_index[pos]],
            negatives=[texts[doc_index[d]] for d in chosen], query_id=qid, positive_id=pos,
            negative_ids=list(chosen), positive_ids=frozenset(positives_of[qid])))
    return examples


Picker = Callable[[list[Candidate], int, np.random.Generator, float | None], list[str]]


def _negative_picker(sampler_spec: dict | None) -> Picker:
    """(pool, n, rng, positive score) -> doc ids: a uniform draw, or the named sampler's."""
    if sampler_spec is None:
        return lambda pool, n, rng, _positive: [
            c.doc_id for c in sample_without_replacement(pool, n, rng)]
    spec = dict(sampler_spec)
    sampler = build_sampler(spec.pop("name", "uniform"), **spec)
    return lambda pool, n, rng, positive: [
        c.doc_id for c in sampler.sample(pool, n, rng, positive)] if pool else []


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


def build_warmup_task(settings) -> RetrieverWarmupTask | RerankerWarmupTask:
    """The task of a warm-up stage (``WarmupRetrieverSettings`` or ``WarmupRerankerSettings``):
    the model from ``settings.base_model`` with the settings' model fields; the saved
    checkpoint gets ``settings.serving_fields()`` instead of the training ones."""
    from jrr_pipeline.ml.modeling import RerankerConfig, RetrieverConfig

    if settings.stage == "warmup_retriever":
        model = DenseRetriever.from_pretrained(settings.base_model,
                                               RetrieverConfig(**settings.model_fields()))
        task: RetrieverWarmupTask | RerankerWarmupTask = RetrieverWarmupTask(model)
    else:
        model = CrossEncoderReranker.from_pretrained(settings.base_model,
                                                     RerankerConfig(**settings.model_fields()))
        task = RerankerWarmupTask(model)
    task.serving = settings.serving_fields()
    return task


def run_warmup(spec) -> dict:
    """Train a warm-up stage from a run file (``ml.training.launch.RunSpec``); returns the
    ``TrainResult`` as a dict with ``n_examples``."""
    import dataclasses

    from jrr_pipeline.ml.training.loop import seed_everything, train

    settings = spec.settings
    tables = spec.tables()
    examples = build_retrieval_examples(
        **tables, n_negatives=settings.n_negatives, seed=settings.seed, split="train",
        source="bm25", rank_window=(settings.rank_window_start, settings.rank_window_end))
    seed_everything(settings.seed)  # a fresh reranker head is initialised from torch's RNG
    task = build_warmup_task(settings)
    write = spec.log_writer()
    result = train(task, examples, settings.train_config(), spec.output_dir,
                   state_dir=spec.state_dir, progress=spec.progress,
                   on_log=lambda step, m: write({"iteration": None, "phase": "train", "step": step,
                                                 "metrics": m}))
    return {**dataclasses.asdict(result), "n_examples": len(examples)}
