"""All-gather that keeps autograd, for cross-batch negatives under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def dist_ready() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's tensor along dim 0. Backward: sum the incoming
    gradients over ranks and return this rank's slice.

    The sum matters: rank r's passages also appear in the other ranks' losses, so their
    gradient has terms from every rank. With it, per-rank losses (mean over local queries)
    under DDP's gradient averaging give exactly the gradient of one process computing the loss
    over the concatenated batch.
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, t.shape[0]
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather ``t`` (same shape on every rank) along dim 0, keeping the graph to the local
    shard (see ``_GatherWithGrad``); the identity when not running distributed."""
    if not dist_ready():
        return t
    return _GatherWithGrad.apply(t)
