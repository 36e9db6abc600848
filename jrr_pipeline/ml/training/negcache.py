"""A negative cache: many passage embeddings as extra negatives for the price of a few encodings.

Lindgren, Reddi, Guo and Kumar, "Efficient Training of Retrieval Models using Negative Cache",
NeurIPS 2021. The cache holds the embeddings of ``M`` corpus passages. Every step a share
``refresh`` of them (the next ones, round robin: the paper's streaming refresh) is re-encoded
with the current encoder; the rest are as old as their last refresh. The InfoNCE softmax of each
query then runs over its positive, the batch's passages (fresh, with gradient) and all ``M``
cached embeddings (constants: no gradient flows into them). With ``refresh = 1`` every cached
embedding is this step's, so the loss equals the loss over the same passages encoded in the
batch; only the gradient differs (the cached passages' own is dropped). The paper's Algorithm 1
instead draws one cached negative per query by Gumbel-max and re-encodes that one with gradient;
we keep the exact softmax over the whole cache, which is cheap at our sizes.

Cached embeddings come from the encoder in eval mode (no dropout, no RNG drawn), so a refresh
never shifts the training's dropout masks. The embeddings and the refresh cursor are buffers of
this module: the loop checkpoints and restores them with the models, so a resumed run continues
with the same cache. Under DDP every rank holds the same cache (same ids, same weights, same
refreshes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Encode = Callable[[list[str]], Tensor]  # passage texts -> [N, H] embeddings


class NegativeCache(nn.Module):
    """``M`` cached passage embeddings with their doc ids; ``refresh`` share re-encoded per step."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], dim: int,
                 refresh: float, chunk: int = 64) -> None:
        super().__init__()
        if len(doc_ids) != len(texts) or not doc_ids:
            raise ValueError(f"NegativeCache: {len(doc_ids)} ids for {len(texts)} texts (need "
                             f"as many, at least one)")
        if not 0 < refresh <= 1:
            raise ValueError(f"NegativeCache: refresh must be in (0, 1], got {refresh}")
        self.doc_ids = list(doc_ids)
        self.texts = list(texts)
        self.column = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.per_step = max(1, math.ceil(refresh * len(self.doc_ids)))
        self.chunk = chunk
        self.register_buffer("embeddings", torch.zeros(len(self.doc_ids), dim))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.doc_ids)

    @torch.no_grad()
    def refresh(self, encode: Encode) -> int:
        """Encode the whole cache the first time, then the next ``per_step`` entries; returns how
        many were encoded."""
        size = len(self.doc_ids)
        if not bool(self.filled):
            rows = list(range(size))
            self.filled.fill_(True)
        else:
            start = int(self.cursor)
            rows = [(start + i) % size for i in range(self.per_step)]
            self.cursor.fill_((start + self.per_step) % size)
        for begin in range(0, len(rows), self.chunk):
            part = rows[begin:begin + self.chunk]
            emb = encode([self.texts[i] for i in part]).float()
            self.embeddings[torch.tensor(part, device=self.embeddings.device)] = emb.to(
                self.embeddings.device)
        return len(rows)

    def positives_mask(self, positive_keys: Sequence[frozenset[str]]) -> Tensor:
        """[B, M] True where a cached passage is one of query i's positives (never its
        negative)."""
        mask = torch.zeros(len(positive_keys), len(self.doc_ids), dtype=torch.bool)
        for row, keys in enumerate(positive_keys):
            for key in keys:
                column = self.column.get(key)
                if column is not None:
                    mask[row, column] = True
        return mask
