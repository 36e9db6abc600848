"""Inference with saved models: load a retriever onto a device, encode queries (optionally bf16).

Plain arguments only (a device, a bf16 flag), so the asset layer, the CLI and bench/ share them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from jrr_pipeline.ml.precision import autocast_dtype

if TYPE_CHECKING:
    from jrr_pipeline.ml.modeling import DenseRetriever

__all__ = ["autocast_dtype", "encode_queries", "load_retriever"]


def load_retriever(path: str | os.PathLike[str], device: str | torch.device) -> DenseRetriever:
    """The retriever saved at ``path``, on ``device``, in eval mode."""
    from jrr_pipeline.ml.modeling import DenseRetriever

    retriever = DenseRetriever.from_pretrained(str(path))
    return retriever.to(device).eval()


def encode_queries(retriever: DenseRetriever, texts: list[str], bf16: bool,
                   batch_size: int = 128) -> np.ndarray:
    """float32 query embeddings of ``texts``, under bf16 autocast when ``bf16``."""
    return retriever.embed(texts, kind="query", batch_size=batch_size,
                           autocast_dtype=autocast_dtype(bf16))
