"""Turn token embeddings into one vector per sequence (mean or CLS pooling)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

PoolingMode = Literal["mean", "cls"]


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the non-padding token embeddings: sum_t m_t h_t / max(sum_t m_t, 1e-9)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def cls_pool(token_embeddings: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The first token's embedding ([CLS] for BERT-style tokenizers, which pad on the right)."""
    return token_embeddings[:, 0]


def pool(token_embeddings: Tensor, attention_mask: Tensor, mode: PoolingMode) -> Tensor:
    """Pool with ``mode``; raises ``ValueError`` for an unknown mode."""
    if mode == "mean":
        return mean_pool(token_embeddings, attention_mask)
    if mode == "cls":
        return cls_pool(token_embeddings, attention_mask)
    raise ValueError(f"pooling: unknown mode {mode!r} (expected 'mean' or 'cls')")


def normalize(embeddings: Tensor) -> Tensor:
    """L2-normalise rows (as sentence-transformers' Normalize module does)."""
    return torch.nn.functional.normalize(embeddings, p=2, dim=1)
