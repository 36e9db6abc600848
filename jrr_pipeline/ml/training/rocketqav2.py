"""RocketQAv2 joint training of the retriever and the reranker over shared candidate lists.

Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
Re-ranking" (EMNLP). For query q and its list [p+, p1-, ..., p(L-1)-] (positive first):

    s_de(q, p) = <E(q), E(p)> / tau          (retriever, over the list only)
    s_ce(q, p) = reranker logit of [q; p]
    L = CE(softmax(s_ce), p+)  +  KL(softmax(s_de) || softmax(s_ce))

``dynamic`` (the paper): both models get gradients from the KL term, so the reranker is also pulled
towards the retriever while it learns from the labels. ``static`` (the ablation): the reranker is
frozen, its scores are a fixed teacher and only the distillation term trains the retriever; there
the teacher's distribution is the target, KL(softmax(s_ce) || softmax(s_de)) (forward KL, plain
knowledge distillation).

Every labelled positive of a query gets its own list (``lists.build_candidate_lists``); the other
positives (and pseudo positives) never count as negatives, in the list or in the batch.

``retriever_ce_weight`` w > 0 (our addition; 0 = the paper, see ``JointSettings``) adds
w * CE(softmax(s_de), p+): the retriever also learns from the label, which matters when the
reranker is still a weaker teacher than the retriever it is distilled into. With ``retriever_in_batch`` that CE runs over every passage
of the batch (the other queries' lists as extra negatives, as in DPR's in-batch training) instead of
the query's own list; the KL term always stays on the query's own list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from jrr_pipeline.ml.losses import ListwiseCELoss, ListwiseKLLoss
from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import score_matrix
from jrr_pipeline.ml.training.lists import (
    CandidateList,
    _list_length,
    in_batch_positive_mask,
    own_list_scores,
    prepare_joint,
    reranker_list_scores,
    retriever_batch_scores,
    save_pair,
    serving_fields,
)

MODES = ("dynamic", "static")


class RocketQAv2Task:
    """The joint task for ``ml.training.train``: modules ``retriever`` and ``reranker``."""

    def __init__(self, retriever: DenseRetriever, reranker: CrossEncoderReranker,
                 mode: str = "dynamic", kl_temperature: float = 1.0, chunk_pairs: int = 0,
                 serving: dict | None = None, grad_cache_chunk: int = 0,
                 retriever_ce_weight: float = 0.0, retriever_in_batch: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"RocketQAv2Task: mode must be one of {MODES}, got {mode!r}")
        if retriever_ce_weight < 0:
            raise ValueError(f"RocketQAv2Task: retriever_ce_weight must be >= 0, got {retriever_ce_weight}")
        if retriever_in_batch and retriever_ce_weight == 0:
            raise ValueError("RocketQAv2Task: retriever_in_batch needs retriever_ce_weight > 0 "
                             "(it widens the retriever's CE term to the whole batch)")
        self.retriever = retriever
        self.reranker = reranker
        self.mode = mode
        self.chunk_pairs = chunk_pairs
        self.serving = dict(serving or {})
        self.grad_cache_chunk = grad_cache_chunk
        # Not in the paper (0 = RocketQAv2): the retriever's own listwise CE on the labelled
        # positive, so it still learns when the reranker teacher is weaker than it is.
        self.retriever_ce_weight = retriever_ce_weight
        self.retriever_in_batch = retriever_in_batch
        self.backward_done = grad_cache_chunk > 0
        self.ce = ListwiseCELoss()
        static = mode == "static"
        self.kl = ListwiseKLLoss(temperature=kl_temperature, detach_teacher=static,
                                 direction="ce||de" if static else "de||ce")
        if static:
            self.reranker.requires_grad_(False)

    def modules(self) -> dict[str, torch.nn.Module]:
        if self.mode == "static":
            return {"retriever": self.retriever}
        return {"retriever": self.retriever, "reranker": self.reranker}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """Modules the loss uses without training them (they still go to the device)."""
        return {"reranker": self.reranker} if self.mode == "static" else {}

    def scores(self, batch: Sequence[CandidateList]) -> tuple[Tensor, Tensor]:
        """(s_de, s_ce), each [B, L]."""
        s_de, s_ce, _ = self._scores(batch)
        return s_de, s_ce

    def _scores(self, batch: Sequence[CandidateList]) -> tuple[Tensor, Tensor, Tensor]:
        length = _list_length(batch, "RocketQAv2Task")
        s_all = retriever_batch_scores(self.retriever, batch)
        if self.mode == "static":
            self.reranker.eval()
            with torch.no_grad():
                s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        else:
            s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        return own_list_scores(s_all, length), s_ce, s_all

    def loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        if self.grad_cache_chunk > 0:
            return self._grad_cache_loss(batch)
        s_de, s_ce, s_all = self._scores(batch)
        return self._combine(s_de, s_ce, self._in_batch(s_all, batch))

    def _in_batch(self, s_all: Tensor, batch: Sequence[CandidateList]) -> Tensor | None:
        """The retriever's in-batch scores with other copies of each positive masked, or None."""
        if not self.retriever_in_batch:
            return None
        return s_all.masked_fill(in_batch_positive_mask(batch).to(s_all.device), float("-inf"))

    def _combine(self, s_de: Tensor, s_ce: Tensor,
                 s_in_batch: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """CE + KL (+ w * the retriever's CE, over ``s_in_batch`` [B, B*L] when given, whose
        positive for query i is column i*L; else over its own list)."""
        kl = self.kl(s_de, s_ce)
        ce = self.ce(s_ce)
        total = kl if self.mode == "static" else ce + kl
        metrics = {}
        if self.retriever_ce_weight > 0:
            if s_in_batch is not None:
                target = torch.arange(s_de.shape[0], device=s_de.device) * s_de.shape[1]
                retriever_ce = self.ce(s_in_batch, target)
            else:
                retriever_ce = self.ce(s_de)
            total = total + self.retriever_ce_weight * retriever_ce
            metrics["retriever_ce_loss"] = float(retriever_ce.detach())
        with torch.no_grad():
            metrics |= {"kl": float(kl), "ce_loss": float(ce),
                       "retriever_acc": float((s_de.argmax(1) == 0).float().mean()),
                       "reranker_acc": float((s_ce.argmax(1) == 0).float().mean())}
        return total, metrics

    def _grad_cache_loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        """The same loss and gradients with GradCache: queries, passages and (dynamic) reranker
        pairs are encoded ``grad_cache_chunk`` at a time, so activation memory is that of one
        chunk; backward happens here (``backward_done``), the loop only steps the optimizer."""
        from jrr_pipeline.ml.training.gradcache import Encoder, chunked, grad_cache_backward

        length = _list_length(batch, "RocketQAv2Task")
        r, n = self.retriever, self.grad_cache_chunk
        pairs = [(x.query, t) for x in batch for t in x.passages]
        encoders = [
            Encoder(lambda c: r.encode_queries(r.tokenize_queries(list(c))),
                    chunked([x.query for x in batch], n)),
            Encoder(lambda c: r.encode_passages(r.tokenize_passages(list(c))),
                    chunked([t for x in batch for t in x.passages], n)),
        ]
        fixed_ce = None
        if self.mode == "static":
            self.reranker.eval()
            with torch.no_grad():
                fixed_ce = reranker_list_scores(self.reranker, batch, n)
        else:
            encoders.append(Encoder(
                lambda c: self.reranker(self.reranker.tokenize([q for q, _ in c], [p for _, p in c]))
                .view(-1, 1), chunked(pairs, n)))
        out: dict[str, float] = {}

        def loss_fn(reps: list[Tensor]) -> Tensor:
            s_all = score_matrix(reps[0], reps[1], 1.0 / r.config.temperature)
            s_ce = fixed_ce if fixed_ce is not None else reps[2].view(len(batch), length)
            total, metrics = self._combine(own_list_scores(s_all, length), s_ce,
                                           self._in_batch(s_all, batch))
            out.update(metrics)
            return total

        loss = grad_cache_backward(encoders, loss_fn)
        return loss, out

    def save(self, output_dir: Path) -> None:
        """``output_dir/retriever`` and ``output_dir/reranker`` (HF / sentence-transformers folders)."""
        save_pair(self.retriever, self.reranker, Path(output_dir), self.serving)


def run_rocketqav2(spec) -> dict:
    """RocketQAv2 joint training from a run file; returns the result dict."""
    from jrr_pipeline.ml.training.loop import train

    settings = spec.settings
    _tables, lists, retriever, reranker = prepare_joint(spec)
    train_cfg = settings.train_config()
    task = RocketQAv2Task(retriever, reranker, mode=settings.mode,
                          kl_temperature=settings.kl_temperature, chunk_pairs=settings.chunk_pairs,
                          serving=serving_fields(settings),
                          grad_cache_chunk=settings.grad_cache_chunk,
                          retriever_ce_weight=settings.retriever_ce_weight,
                          retriever_in_batch=settings.retriever_in_batch)
    write = spec.log_writer()
    outcome = train(task, lists, train_cfg, spec.output_dir, state_dir=spec.state_dir,
                    progress=spec.progress,
                    module_lr_multipliers={"reranker": settings.reranker_lr / train_cfg.lr},
                    on_log=lambda step, m: write({"iteration": None, "phase": "joint",
                                                  "step": step, "metrics": m}))
    if not outcome.completed:
        raise RuntimeError("joint training stopped before its last step")
    return {"method": "rocketqav2", "lists": len(lists), "steps": outcome.step,
            "wall_s": outcome.wall_s, "bf16": outcome.bf16, "world_size": outcome.world_size,
            "final_loss": outcome.final_loss, "resumed_from_step": outcome.resumed_from_step}
