"""The sampler interface: pick ``n`` negatives for one query from its retrieved candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


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

    def sample(self, negatives: list[Candidate], n: int, rng: np.random.Generator,
               positive_score: float | None = None) -> list[Candidate]:
        """Up to ``n`` distinct candidates (fewer when the eligible pool is smaller)."""
        ...


def sampler_names() -> list[str]:
    return sorted(_registry())


def build_sampler(name: str, **options: Any) -> Sampler:
    """A sampler by name: ``uniform`` (rank window), ``denoised`` or ``simans``."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(registry))}")
    cls = registry[name]
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"sampler {name!r}: {err}") from None


def _registry() -> dict[str, type]:
    from jrr_pipeline.ml.sampling.denoised import DenoisedSampler
    from jrr_pipeline.ml.sampling.simans import SimANSSampler
    from jrr_pipeline.ml.sampling.uniform import UniformWindowSampler

    return {"uniform": UniformWindowSampler, "denoised": DenoisedSampler, "simans": SimANSSampler}


def draw_uniform(pool: list[Candidate], n: int, rng: np.random.Generator) -> list[Candidate]:
    """``n`` distinct members of ``pool`` uniformly at random, in rank order."""
    if n <= 0 or not pool:
        return []
    picked = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return sorted((pool[i] for i in picked), key=lambda c: (c.rank, c.doc_id))
