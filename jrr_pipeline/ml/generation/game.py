"""The generator-retriever game, one round at a time (our design doc, "adversarial query
generation"): sample documents, let the generator write ``k`` queries for each, reward them
(``reward.py``), update the generator by REINFORCE with a baseline, then train the retriever
(InfoNCE) and the reranker (listwise CE) on the round's (query, document) pairs with BM25 hard
negatives, so the next round's generator faces a stronger retriever. With ``relevance =
"fusion"`` the relevance S(q, d) comes from a frozen zero-shot scorer
(``fusion_relevance.py``) instead, and the game has no reranker to train.

Every round ends with the whole game state written atomically to ``state_dir``: a killed game
resumes at the next round and ends where an uninterrupted one would (documents, samples and
dropout are seeded per round).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jrr_pipeline.ml.generation.base import GeneratedQuery, QueryGenerator
from jrr_pipeline.ml.generation.reward import (
    RewardWeights,
    penalties,
    reinforce_loss,
    relevance,
    retriever_losses,
    total_reward,
)
from jrr_pipeline.ml.generation.spans import diversity, longest_copy
from jrr_pipeline.ml.io import atomic_write_bytes
from jrr_pipeline.ml.precision import autocast_context
from jrr_pipeline.ml.training.examples import RetrievalExample
from jrr_pipeline.ml.training.schedule import build_optimizer
from jrr_pipeline.ml.training.warmup import RerankerWarmupTask, RetrieverWarmupTask

STATE_FILE = "game.pt"


@dataclass(frozen=True)
class GameConfig:
    rounds: int = 6
    documents_per_round: int = 64
    queries_per_document: int = 4
    n_negatives: int = 3
    negative_depth: int = 30  # hard negatives are drawn from the query's BM25 top-k
    weights: RewardWeights = field(default_factory=RewardWeights)
    relevance: str = "reranker"  # or "fusion": S(q, d) from the scorer given to the game
    baseline: str = "document_mean"
    policy_lr: float = 1e-3
    retriever_lr: float = 2e-5
    reranker_lr: float = 5e-5
    reranker_head_lr_multiplier: float = 50.0  # the reranker's fresh head learns this much faster
    batch_size: int = 16
    bf16: bool = False
    seed: int = 42


@dataclass
class RoundResult:
    round: int
    rows: list[dict[str, Any]]
    metrics: dict[str, float]


class GenerationGame:
    """Plays ``config.rounds`` rounds of the game over a corpus (``doc_ids``, ``doc_texts``)
    with a BM25 index for hard negatives; ``labelled`` examples (augment mode) are mixed into
    the retriever's and reranker's training, as many as the round's generated pairs. With
    ``config.relevance == "fusion"``, ``relevance_scorer`` (a ``FusionRelevance``) scores S(q, d)
    and ``reranker`` is None."""

    def __init__(self, generator: QueryGenerator, retriever, reranker, bm25,
                 doc_ids: list[str], doc_texts: list[str], config: GameConfig,
                 labelled: list[RetrievalExample] | None = None,
                 relevance_scorer: Callable[[list[str], list[int], list[list[str]]],
                                            torch.Tensor] | None = None) -> None:
        if len(doc_ids) != len(doc_texts) or not doc_ids:
            raise ValueError("GenerationGame: doc_ids and doc_texts must be equal, non-empty")
        if config.relevance not in ("reranker", "fusion"):
            raise ValueError(f"GenerationGame: relevance must be 'reranker' or 'fusion', got "
                             f"{config.relevance!r}")
        if (config.relevance == "fusion") != (relevance_scorer is not None):
            raise ValueError("GenerationGame: relevance = 'fusion' needs a relevance_scorer "
                             "(and 'reranker' takes none)")
        if (reranker is None) != (config.relevance == "fusion"):
            raise ValueError("GenerationGame: a reranker plays only when relevance = 'reranker'")
        self.generator, self.retriever, self.reranker = generator, retriever, reranker
        self.relevance_scorer = relevance_scorer
        self.bm25, self.config = bm25, config
        self.doc_ids, self.doc_texts = list(doc_ids), list(doc_texts)
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        self.labelled = list(labelled or [])
        params = generator.trainable_parameters()
        self.policy_opt = torch.optim.Adam(params, lr=config.policy_lr) if params else None
        self.retriever_opt = build_optimizer(retriever.named_parameters(), config.retriever_lr,
                                             weight_decay=0.01)
        self.reranker_opt = None if reranker is None else build_optimizer(
            reranker.named_parameters(), config.reranker_lr, weight_decay=0.01,
            head_lr_multiplier=config.reranker_head_lr_multiplier)
        self.moving_baseline = 0.0
        self.results: list[RoundResult] = []
        self.first_round = 0  # where the last play() started (after a resume: > 0)

    # ---------------------------------------------------------------------------- playing
    def play(self, state_dir: Path | None = None,
             on_round: Callable[[RoundResult], None] | None = None,
             stop_after: int | None = None) -> list[RoundResult]:
        """All rounds (resuming from ``state_dir``); ``on_round`` sees each new round's result;
        ``stop_after`` ends after that many new rounds (tests: a kill between rounds)."""
        start = self._resume(state_dir) if state_dir else 0
        self.first_round = start
        for played, r in enumerate(range(start, self.config.rounds)):
            if stop_after is not None and played >= stop_after:
                break
            result = self.play_round(r)
            self.results.append(result)
            if state_dir:
                self._save(state_dir, r + 1)
            if on_round:
                on_round(result)
        return self.results

    def play_round(self, r: int) -> RoundResult:
        cfg = self.config
        started = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + r)
        rng = np.random.default_rng([cfg.seed, r])
        picked = rng.choice(len(self.doc_ids), size=min(cfg.documents_per_round,
                                                         len(self.doc_ids)), replace=False)
        documents = [self.doc_texts[i] for i in picked]
        sample_rng = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        generated = self.generator.sample(documents, cfg.queries_per_document, sample_rng)
        sources = [int(picked[g.doc_index]) for g in generated]
        negatives = self.hard_negatives([g.text for g in generated], sources, rng)
        loss, rel, pen = self._reward_parts(generated, sources, negatives)
        reward = total_reward(loss, rel, pen, cfg.weights)
        policy_loss = self._update_policy(generated, reward)
        examples = [self._example(g.text, s, neg, r, i)
                    for i, (g, s, neg) in enumerate(zip(generated, sources, negatives,
                                                        strict=True)) if g.text]
        retriever_loss, reranker_loss = self._train_models(examples, rng)
        texts = [g.text for g in generated]
        rows = [{"query_id": query_id(r, self.doc_ids[s], j % cfg.queries_per_document),
                 "text": g.text, "doc_id": self.doc_ids[s], "round": r,
                 "retriever_loss": float(loss[j]), "relevance": float(rel[j]),
                 "penalty": float(pen[j]), "reward": float(reward[j])}
                for j, (g, s) in enumerate(zip(generated, sources, strict=True))]
        copies = [longest_copy(t, self.doc_texts[s]) for t, s in zip(texts, sources, strict=True)]
        metrics = {"reward": float(reward.mean()), "reward_retriever_loss": float(loss.mean()),
                   "reward_relevance": float(rel.mean()), "reward_penalty": float(pen.mean()),
                   "policy_loss": policy_loss, "retriever_train_loss": retriever_loss,
                   **({} if self.reranker is None else {"reranker_train_loss": reranker_loss}),
                   "queries": float(len(generated)),
                   "mean_copy_words": float(np.mean(copies)) if copies else 0.0,
                   "seconds": time.perf_counter() - started, **diversity(texts)}
        return RoundResult(r, rows, metrics)

    # ---------------------------------------------------------------------------- pieces
    def hard_negatives(self, queries: list[str], sources: list[int],
                       rng: np.random.Generator) -> list[list[str]]:
        """``n_negatives`` doc ids per query drawn from its BM25 top ``negative_depth`` without
        its source document, topped up with random documents."""
        n = self.config.n_negatives
        if n == 0:
            return [[] for _ in queries]
        ranked, _ = self.bm25.search([q or "." for q in queries], self.config.negative_depth)
        out = []
        for docs, source in zip(ranked, sources, strict=True):
            pool = [d for d in docs if d != self.doc_ids[source]]
            chosen = [pool[i] for i in sorted(rng.permutation(len(pool))[:n])] if pool else []
            while len(chosen) < n:
                extra = self.doc_ids[int(rng.integers(len(self.doc_ids)))]
                if extra != self.doc_ids[source] and extra not in chosen:
                    chosen.append(extra)
            out.append(chosen)
        return out

    def _reward_parts(self, generated: list[GeneratedQuery], sources: list[int],
                      negatives: list[list[str]]):
        cfg = self.config
        texts = [g.text or "." for g in generated]
        positives = [self.doc_texts[s] for s in sources]
        negative_texts = [[self.doc_texts[self.doc_index[d]] for d in row] for row in negatives]
        keys = [self.doc_ids[s] for s in sources]
        device = self.retriever.device
        players = [m for m in (self.retriever, self.reranker) if m is not None]
        was = [m.training for m in players]
        for m in players:
            m.eval()
        try:
            loss, rel = [], []
            for i in range(0, len(texts), cfg.batch_size * 4):
                part = slice(i, i + cfg.batch_size * 4)
                with autocast_context(device, torch.bfloat16 if cfg.bf16 else None):
                    loss.append(retriever_losses(self.retriever, texts[part], positives[part],
                                                 negative_texts[part], keys[part]))
                    if self.reranker is not None:
                        rel.append(relevance(self.reranker, texts[part], positives[part],
                                             negative_texts[part]))
            if self.relevance_scorer is not None:
                rel = [self.relevance_scorer(texts, sources, negatives)]
        finally:
            for m, mode in zip(players, was, strict=True):
                m.train(mode)
        pen = penalties([g.text for g in generated], positives, cfg.weights.max_query_words,
                        cfg.weights.max_copy_words)
        return torch.cat(loss), torch.cat(rel), pen

    def _update_policy(self, generated: list[GeneratedQuery], reward: torch.Tensor) -> float:
        if self.policy_opt is None:
            return 0.0
        log_probs = torch.stack([g.log_prob for g in generated])
        groups = torch.tensor([g.doc_index for g in generated])
        loss = reinforce_loss(log_probs, reward, groups, self.config.baseline,
                              self.moving_baseline)
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.trainable_parameters(), 1.0)
        self.policy_opt.step()
        self.moving_baseline = 0.9 * self.moving_baseline + 0.1 * float(reward.mean())
        return float(loss.detach())

    def _example(self, text: str, source: int, negatives: list[str], r: int,
                 j: int) -> RetrievalExample:
        doc = self.doc_ids[source]
        return RetrievalExample(
            query=text, positive=self.doc_texts[source],
            negatives=[self.doc_texts[self.doc_index[d]] for d in negatives],
            query_id=query_id(r, doc, j % self.config.queries_per_document), positive_id=doc,
            negative_ids=list(negatives),
            positive_ids=frozenset({doc}))

    def _train_models(self, examples: list[RetrievalExample],
                      rng: np.random.Generator) -> tuple[float, float]:
        cfg = self.config
        if self.labelled:
            picks = rng.choice(len(self.labelled), size=min(len(examples), len(self.labelled)),
                               replace=False)
            examples = examples + [self.labelled[i] for i in picks]
        order = rng.permutation(len(examples))
        batches = [[examples[i] for i in order[s:s + cfg.batch_size]]
                   for s in range(0, len(order), cfg.batch_size)]
        batches = [b for b in batches if len(b) > 1]
        losses = {"retriever": [], "reranker": []}
        tasks = [("retriever", RetrieverWarmupTask(self.retriever, cross_batch=False),
                  self.retriever_opt, self.retriever)]
        if self.reranker is not None:
            tasks.append(("reranker", RerankerWarmupTask(self.reranker), self.reranker_opt,
                          self.reranker))
        for name, task, optimizer, model in tasks:
            model.train()
            for batch in batches:
                with autocast_context(model.device, torch.bfloat16 if cfg.bf16 else None):
                    loss, _ = task.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses[name].append(float(loss.detach()))
            model.eval()
        return (float(np.mean(losses["retriever"])) if losses["retriever"] else math.nan,
                float(np.mean(losses["reranker"])) if losses["reranker"] else math.nan)

    # ------------------------------------------------------------------------- state
    def _save(self, state_dir: Path, next_round: int) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        policy = getattr(self.generator, "head", self.generator)
        state = {
            "next_round": next_round, "config": asdict(self.config),
            "policy": policy.state_dict(),
            "policy_opt": self.policy_opt.state_dict() if self.policy_opt else None,
            "retriever": self.retriever.state_dict(), "retriever_opt": self.retriever_opt.state_dict(),
            "reranker": None if self.reranker is None else self.reranker.state_dict(),
            "reranker_opt": None if self.reranker_opt is None else self.reranker_opt.state_dict(),
            "moving_baseline": self.moving_baseline,
            "results": [asdict(result) for result in self.results],
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(state_dir / STATE_FILE, buffer.getvalue())

    def _resume(self, state_dir: Path) -> int:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return 0
        state = torch.load(path, weights_only=False, map_location="cpu")
        if state["config"] != asdict(self.config):
            raise ValueError(f"{path}: the saved game has other settings; delete the folder to "
                             f"start afresh")
        getattr(self.generator, "head", self.generator).load_state_dict(state["policy"])
        if self.policy_opt and state["policy_opt"]:
            self.policy_opt.load_state_dict(state["policy_opt"])
        self.retriever.load_state_dict(state["retriever"])
        self.retriever_opt.load_state_dict(state["retriever_opt"])
        if self.reranker is not None:
            self.reranker.load_state_dict(state["reranker"])
            self.reranker_opt.load_state_dict(state["reranker_opt"])
        self.moving_baseline = state["moving_baseline"]
        self.results = [RoundResult(**result) for result in state["results"]]
        return int(state["next_round"])


def query_id(r: int | str, doc_id: str, j: int) -> str:
    """Id of a generated query: ``gen-<round>-<doc id>-<j>``."""
    return f"gen-{r}-{doc_id}-{j}"


def write_queries(generator: QueryGenerator, doc_ids: list[str], doc_texts: list[str], k: int,
                  seed: int, label: str = "final", batch: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """``k`` queries per document from the trained generator (no reward): the training queries
    the pipeline uses downstream; rows as the game's, reward parts left empty."""
    rng = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(doc_ids), batch):
        with torch.no_grad():
            generated = generator.sample(doc_texts[start:start + batch], k, rng)
        for j, g in enumerate(generated):
            doc = doc_ids[start + g.doc_index]
            rows.append({"query_id": query_id(label, doc, j % k), "text": g.text,
                         "doc_id": doc, "round": -1, "retriever_loss": None,
                         "relevance": None, "penalty": None, "reward": None})
        if progress:
            progress(min(start + batch, len(doc_ids)), len(doc_ids))
    return rows
