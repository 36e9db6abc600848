"""Listwise softmax cross-entropy over each query's candidate list.

For scores s_i = [s_i1 .. s_iL] of query i's list and the index t_i of its positive::

    L = -1/B * sum_i log( exp(s_i,t_i) / sum_l exp(s_il) )

References: Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense Passage Retrieval
and Passage Re-ranking" (listwise training of the re-ranker); Gao et al. 2021, "Rethink
Training of BERT Rerankers in Multi-Stage Retrieval Pipeline" (Localized Contrastive
Estimation). Computed in fp32 outside autocast; masked-out columns may hold -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jrr_pipeline.ml.precision import full_precision


class ListwiseCELoss(nn.Module):
    """Cross-entropy of the softmax over each row of ``scores``; the positive is column 0 unless
    ``target`` gives its column per row."""

    def forward(self, scores: Tensor, target: Tensor | None = None) -> Tensor:
        """Mean loss over the B lists; ``scores`` [B, L], ``target`` [B] (default zeros)."""
        if scores.dim() != 2 or scores.shape[1] < 1:
            raise ValueError(f"ListwiseCELoss: expected scores [B, L], got {tuple(scores.shape)}")
        if target is None:
            target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        elif target.shape != (scores.shape[0],):
            raise ValueError(
                f"ListwiseCELoss: target shape {tuple(target.shape)} does not match "
                f"{scores.shape[0]} lists"
            )
        with full_precision(scores.device):
            return F.cross_entropy(scores.float(), target.long())
