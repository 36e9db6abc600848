"""Uniform sampling over a rank window (DPR / ANCE hard negatives)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jrr_pipeline.ml.sampling.base import Candidate, sample_without_replacement


@dataclass
class UniformWindowSampler:
    """Every candidate ranked in ``[rank_start, rank_end]`` (inclusive) is equally likely.

    Picks come back in the order drawn (the warm-up's negatives have always been laid out so),
    not in rank order like the scored samplers'."""

    rank_start: int = 1
    rank_end: int = 100
    name: str = "uniform"

    def __post_init__(self) -> None:
        if not 1 <= self.rank_start <= self.rank_end:
            raise ValueError(f"uniform sampler: need 1 <= rank_start <= rank_end, got "
                             f"[{self.rank_start}, {self.rank_end}]")

    def eligible(self, negatives: list[Candidate]) -> list[Candidate]:
        """The candidates inside the window."""
        return [c for c in negatives if self.rank_start <= c.rank <= self.rank_end]

    def sample(self, negatives: list[Candidate], n: int, rng: np.random.Generator,
               positive_score: float | None = None) -> list[Candidate]:
        return sample_without_replacement(self.eligible(negatives), n, rng)
