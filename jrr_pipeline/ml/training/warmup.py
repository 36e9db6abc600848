"""The two warm-up tasks (DPR-style retriever, listwise reranker); their examples are built in
``ml.training.examples`` (re-exported here)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from jrr_pipeline.ml.losses import InfoNCELoss, ListwiseCELoss
from jrr_pipeline.ml.losses.distributed import dist_ready
from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import score_matrix
from jrr_pipeline.ml.training.examples import (  # noqa: F401 (re-exported)
    RetrievalExample,
    build_retrieval_examples,
)
from jrr_pipeline.ml.training.negcache import NegativeCache


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

    def __init__(self, retriever: DenseRetriever, cross_batch: bool = True,
                 cache: NegativeCache | None = None) -> None:
        self.retriever = retriever
        self.cross_batch = cross_batch
        self.loss_fn = InfoNCELoss(cross_batch=cross_batch)
        self.cache = cache

    def modules(self) -> dict[str, torch.nn.Module]:
        """The retriever (both towers when they are separate), and the negative cache when there
        is one (its embeddings are buffers, so they are checkpointed with the model)."""
        if self.cache is not None:
            return {"retriever": self.retriever, "negative_cache": self.cache}
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
        cached = self._refreshed_cache(batch)
        if cached is not None:
            mask = torch.cat([mask, self.cache.positives_mask(
                [example.positive_keys() for example in batch])], dim=1)
        loss = self.loss_fn(q, p, 1.0 / retriever.config.temperature, mask=mask, extra=cached)
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
        if cached is not None:
            metrics["negatives_per_query"] = float((~mask).sum()) / len(batch) - 1
        return loss, metrics

    def _refreshed_cache(self, batch: Sequence[RetrievalExample]) -> Tensor | None:
        """The cache's embeddings after this step's refresh by the current encoder (eval mode,
        no gradient), or None without a cache."""
        if self.cache is None:
            return None
        retriever = self.retriever
        was_training = retriever.training
        retriever.eval()
        try:
            self.cache.refresh(lambda texts: retriever.encode_passages(
                retriever.tokenize_passages(texts)))
        finally:
            retriever.train(was_training)
        return self.cache.embeddings

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
    from jrr_pipeline.ml.training.warmup_plan import WarmupPlan, plan_retriever_warmup

    settings = spec.settings
    tables = spec.tables()
    seed_everything(settings.seed)  # a fresh reranker head is initialised from torch's RNG
    task = build_warmup_task(settings)
    if isinstance(task, RetrieverWarmupTask):  # sampler, batching and negatives settings
        plan = plan_retriever_warmup(settings, tables, task.retriever,
                                     spec.models.get("reranker"))
        task.cache = plan.cache
    else:
        plan = WarmupPlan(build_retrieval_examples(
            **tables, n_negatives=settings.n_negatives, seed=settings.seed, split="train",
            source="bm25", rank_window=(settings.rank_window_start, settings.rank_window_end)))
    write = spec.log_writer()
    result = train(task, plan.examples, settings.train_config(), spec.output_dir,
                   state_dir=spec.state_dir, progress=spec.progress, batching=plan.batching,
                   on_log=lambda step, m: write({"iteration": None, "phase": "train", "step": step,
                                                 "metrics": m}))
    return {**dataclasses.asdict(result), "n_examples": len(plan.examples), **plan.info}
