"""Uniform sampling over the negatives the reranker considers safe (RocketQA denoising).

Qu et al., "RocketQA: An Optimized Training Approach to Dense Passage Retrieval for Open-Domain
Question Answering", NAACL 2021: a retrieved passage is used as a negative only when the
cross-encoder gives it a low relevance probability (below ``tau_neg``, 0.1 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jrr_pipeline.ml.sampling.base import Candidate, draw_uniform


@dataclass
class DenoisedSampler:
    tau_neg: float = 0.1
    rank_end: int = 100
    name: str = "denoised"

    def __post_init__(self) -> None:
        if not 0.0 < self.tau_neg <= 1.0:
            raise ValueError(f"denoised sampler: tau_neg must be in (0, 1], got {self.tau_neg}")

    def eligible(self, negatives: list[Candidate]) -> list[Candidate]:
        """The candidates up to ``rank_end`` whose reranker probability is below ``tau_neg``."""
        unscored = [c.doc_id for c in negatives if c.ce_prob is None]
        if unscored:
            raise ValueError(f"denoised sampler: {len(unscored)} candidates have no reranker "
                             f"probability (e.g. {unscored[0]!r}); score them first")
        return [c for c in negatives if c.rank <= self.rank_end and c.ce_prob < self.tau_neg]

    def sample(self, negatives: list[Candidate], n: int, rng: np.random.Generator,
               positive_score: float | None = None) -> list[Candidate]:
        return draw_uniform(self.eligible(negatives), n, rng)
