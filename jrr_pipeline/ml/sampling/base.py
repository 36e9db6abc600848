"""The sampler interface (pick ``n`` negatives for one query from its retrieved candidates) and the
uniform draw without replacement that every sampler, and every other drawing step, shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Candidate:
    """One retrieved passage of a query.

    ``rank`` is 1-based in the source ranking, ``score`` the retriever (or BM25) score,
    ``ce_prob`` the calibrated reranker probability of being relevant (None when not scored).
    """

    doc_id: str
    rank: int
    score: float = 0.0
    source: str = ""
    ce_prob: float | None = None


@runtime_checkable
class Sampler(Protocol):
    name: str

    def eligible(self, negatives: list[Candidate]) -> list[Candidate]:
        """The candidates this sampler may ever return (its pool before any draw)."""
        ...

    def sample(self, negatives: list[Candidate], n: int, rng: np.random.Generator,
               positive_score: float | None = None) -> list[Candidate]:
        """Up to ``n`` distinct candidates (fewer when the eligible pool is smaller)."""
        ...


def sample_without_replacement(pool: Sequence[T], n: int, rng: np.random.Generator, *,
                               pool_order: bool = False) -> list[T]:
    """``min(n, len(pool))`` distinct members of ``pool``, uniformly at random, in the order drawn
    (``pool_order``: in their order in ``pool``).

    One ``rng.choice(len(pool), size, replace=False)`` call, none when there is nothing to draw:
    the draws of a seed are part of every caller's reproducible output.
    """
    size = min(n, len(pool))
    if size <= 0:
        return []
    picked = rng.choice(len(pool), size=size, replace=False)
    return [pool[i] for i in (sorted(picked) if pool_order else picked)]


def in_rank_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """``candidates`` by (rank, doc id): the order the scored samplers (denoised, SimANS) return
    their picks in."""
    return sorted(candidates, key=lambda c: (c.rank, c.doc_id))


def draw_uniform(pool: list[Candidate], n: int, rng: np.random.Generator) -> list[Candidate]:
    """``n`` distinct members of ``pool`` uniformly at random, in rank order."""
    return in_rank_order(sample_without_replacement(pool, n, rng))
