"""InfoNCE with in-batch, hard and (under DDP) cross-batch negatives.

For query i with passages laid out ``[pos_0, neg_0_1..neg_0_n, pos_1, ...]`` (1 + n per query)::

    L = -1/B * sum_i log( exp(s * <q_i, p_i+>) / sum_j exp(s * <q_i, p_j>) )

where j runs over every passage of the (gathered) batch: the query's own hard negatives, the
other queries' positives and negatives, and, with ``cross_batch``, the passages of all DDP
ranks; ``mask`` removes columns that must not count as negatives of query i (its other labelled
positives, copies of its positive). ``s`` is the scale (1 / temperature). Logits and the
softmax are computed in fp32 outside autocast. ``extra`` embeddings (a negative cache) are more
columns after the batch's passages, the same for every query and rank.

References: Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain Question
Answering" (DPR, in-batch negatives); Qu et al. 2021, "RocketQA: An Optimized Training
Approach to Dense Passage Retrieval" (cross-batch negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from jrr_pipeline.ml.losses.distributed import dist_ready, gather_with_grad
from jrr_pipeline.ml.precision import full_precision, score_matrix


class InfoNCELoss(nn.Module):
    """Softmax cross-entropy of each query over all passages in the (global) batch.

    After each call ``last_num_passages`` holds the number of passages in the logits
    (``world_size * B * (1 + n)`` with cross-batch negatives under DDP). Under DDP every rank
    must pass tensors of the same shape (equal shards, e.g. drop the last partial batch).
    """

    def __init__(self, cross_batch: bool = True) -> None:
        super().__init__()
        self.cross_batch = cross_batch
        self.last_num_passages = 0

    def forward(self, q: Tensor, p: Tensor, scale: float, mask: Tensor | None = None,
                extra: Tensor | None = None) -> Tensor:
        """Mean loss over the local queries; ``q`` [B, H], ``p`` [B * (1 + n), H]; ``extra``
        [M, H] negatives appended as columns after the (gathered) passages (gradient as the
        caller gives them: a cache passes constants); ``mask`` [B, passages in the logits (+ M)]
        is True where a column is not a negative of that query (never its own positive's)."""
        if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
            raise ValueError(
                f"InfoNCELoss: expected q [B, H] and p [B*(1+n), H], got {tuple(q.shape)} "
                f"and {tuple(p.shape)}"
            )
        if q.shape[0] == 0 or p.shape[0] % q.shape[0] != 0:
            raise ValueError(
                f"InfoNCELoss: {p.shape[0]} passages is not a positive multiple of "
                f"{q.shape[0]} queries"
            )
        group = p.shape[0] // q.shape[0]
        offset = 0
        if self.cross_batch and dist_ready():
            offset = dist.get_rank() * p.shape[0]
            p = gather_with_grad(p)
        self.last_num_passages = p.shape[0]
        target = offset + torch.arange(q.shape[0], device=q.device) * group
        with full_precision(q.device):
            logits = score_matrix(q, p, scale)
            if extra is not None:
                logits = torch.cat([logits, score_matrix(q, extra, scale)], dim=1)
            if mask is not None:
                if mask.shape != logits.shape:
                    raise ValueError(f"InfoNCELoss: mask {tuple(mask.shape)} does not match the "
                                     f"logits {tuple(logits.shape)}")
                if mask.gather(1, target[:, None].to(mask.device)).any():
                    raise ValueError("InfoNCELoss: the mask hides a query's own positive")
                logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
            return F.cross_entropy(logits, target)
