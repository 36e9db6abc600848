"""Listwise distillation between the retriever and the reranker over the same candidate list.

With retriever scores s_de and reranker scores s_ce over query i's list (L candidates) and
p_de = softmax(s_de / T), p_ce = softmax(s_ce / T)::

    L_KL = 1/B * sum_i KL(p_de,i || p_ce,i) = 1/B * sum_i sum_l p_de,il (log p_de,il - log p_ce,il)

as written in RocketQAv2 (Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense Passage
Retrieval and Passage Re-ranking", EMNLP, eq. 6). ``direction="ce||de"`` gives KL(p_ce || p_de),
the form most implementations minimise (the teacher's distribution weights the log ratio).

Dynamic listwise distillation (RocketQAv2) lets the gradient reach both models; the ``static``
ablation (``detach_teacher=True``) freezes the reranker's side, i.e. plain knowledge distillation,
where the teacher's distribution is the target (``direction="ce||de"``, forward KL, whose
gradient is that of the cross-entropy -sum p_ce log p_de). Computed in fp32 outside autocast.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from jrr_pipeline.ml.precision import full_precision

DIRECTIONS = ("de||ce", "ce||de")


class ListwiseKLLoss(nn.Module):
    def __init__(self, temperature: float = 1.0, direction: str = "de||ce",
                 detach_teacher: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"ListwiseKLLoss: temperature must be > 0, got {temperature}")
        if direction not in DIRECTIONS:
            raise ValueError(f"ListwiseKLLoss: direction must be one of {DIRECTIONS}, got {direction!r}")
        self.temperature = temperature
        self.direction = direction
        self.detach_teacher = detach_teacher

    def forward(self, retriever_scores: Tensor, reranker_scores: Tensor) -> Tensor:
        """Mean KL over the B lists; both score tensors are [B, L]."""
        if retriever_scores.shape != reranker_scores.shape or retriever_scores.dim() != 2:
            raise ValueError(f"ListwiseKLLoss: expected two [B, L] tensors, got "
                             f"{tuple(retriever_scores.shape)} and {tuple(reranker_scores.shape)}")
        ce = reranker_scores.detach() if self.detach_teacher else reranker_scores
        with full_precision(retriever_scores.device):
            log_de = F.log_softmax(retriever_scores.float() / self.temperature, dim=-1)
            log_ce = F.log_softmax(ce.float() / self.temperature, dim=-1)
            if self.direction == "de||ce":
                return (log_de.exp() * (log_de - log_ce)).sum(-1).mean()
            return (log_ce.exp() * (log_ce - log_de)).sum(-1).mean()
