"""Gradient caching: a large-batch contrastive / listwise step in the memory of a small one.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(GradCache). The loss depends on the encoders only through the representations, so the step is
split in three:

1. encode every chunk without a graph and keep only the representations r;
2. compute the loss on r as leaf tensors and backpropagate to get dL/dr (cheap: no encoder graph);
3. re-encode each chunk with a graph and backpropagate ``r_chunk . dL/dr_chunk`` through it.

Peak activation memory is that of one chunk, the gradients equal the plain step's: the random
state (dropout) of each chunk's first pass is saved and restored for its second pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class _RandomState:
    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> _RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class Encoder:
    """``fn(chunk) -> [n, D] tensor`` applied to each element of ``chunks``."""

    fn: Callable[[Any], Tensor]
    chunks: Sequence[Any]


def grad_cache_backward(encoders: Sequence[Encoder],
                        loss_fn: Callable[[list[Tensor]], Tensor]) -> Tensor:
    """Run the three GradCache passes; gradients accumulate in the encoders' parameters.

    ``loss_fn`` receives one representation tensor per encoder (its chunks concatenated) and
    returns the scalar loss, which is returned detached.
    """
    states: list[list[_RandomState]] = []
    reps: list[Tensor] = []
    for encoder in encoders:
        chunk_states, outs = [], []
        for chunk in encoder.chunks:
            chunk_states.append(_RandomState.capture())
            with torch.no_grad():
                outs.append(encoder.fn(chunk))
        states.append(chunk_states)
        reps.append(torch.cat(outs).detach().requires_grad_(True))
    loss = loss_fn(reps)
    loss.backward()
    after = _RandomState.capture()
    for encoder, rep, chunk_states in zip(encoders, reps, states, strict=True):
        start = 0
        for chunk, state in zip(encoder.chunks, chunk_states, strict=True):
            state.restore()
            out = encoder.fn(chunk)
            grad = rep.grad[start:start + len(out)]
            start += len(out)
            out.backward(grad.to(out.dtype))
    after.restore()  # continue the random stream as if the step had run once
    return loss.detach()


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive slices of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]
