"""SimANS: sample ambiguous negatives, neither too easy nor likely false negatives.

Zhou et al., "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval", EMNLP 2022
(industry track). A negative p- of query q with positive p+ is drawn with probability

    w(p-) proportional to exp(-a * (s(q, p-) - s(q, p+) - b)^2)

so negatives scored close to ``s(q, p+) + b`` are the most likely: very low scores (easy) and
scores far above the positive (probable false negatives) are both rare. ``a`` sets the width,
``b`` the offset. Weights are kept as log-weights and sampled without replacement with the
Gumbel-top-k trick (Kool et al., 2019), so large ``a`` never underflows to all-zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jrr_pipeline.ml.sampling.base import Candidate, in_rank_order


def simans_log_weights(negative_scores: np.ndarray, positive_score: float, a: float,
                       b: float) -> np.ndarray:
    """log w = -a (s_neg - s_pos - b)^2, normalised with logsumexp (so logs of probabilities)."""
    s = np.asarray(negative_scores, dtype=np.float64)
    logw = -a * (s - positive_score - b) ** 2
    return logw - np.logaddexp.reduce(logw) if len(logw) else logw


@dataclass
class SimANSSampler:
    a: float = 1.0
    b: float = 0.0
    rank_end: int = 100
    name: str = "simans"

    def __post_init__(self) -> None:
        if self.a <= 0:
            raise ValueError(f"simans sampler: a must be > 0, got {self.a}")

    def eligible(self, negatives: list[Candidate]) -> list[Candidate]:
        """The candidates up to ``rank_end`` (the weights only change how likely each is)."""
        return [c for c in negatives if c.rank <= self.rank_end]

    def sample(self, negatives: list[Candidate], n: int, rng: np.random.Generator,
               positive_score: float | None = None) -> list[Candidate]:
        if positive_score is None:
            raise ValueError("simans sampler: needs the positive's score s(q, p+)")
        pool = self.eligible(negatives)
        if n <= 0 or not pool:
            return []
        logp = simans_log_weights(np.array([c.score for c in pool]), positive_score, self.a, self.b)
        keys = logp + rng.gumbel(size=len(pool))  # Gumbel-top-k = sampling without replacement
        picked = np.argsort(-keys, kind="stable")[: min(n, len(pool))]
        return in_rank_order(pool[i] for i in picked)
