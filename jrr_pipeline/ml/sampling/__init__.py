"""Negative samplers behind one interface, chosen by name (``build_sampler``).

The registry lives here, above the sampler modules, so ``base`` never imports its implementations.
"""

from typing import Any

from jrr_pipeline.ml.sampling.base import (
    Candidate,
    Sampler,
    draw_uniform,
    in_rank_order,
    sample_without_replacement,
)
from jrr_pipeline.ml.sampling.denoised import DenoisedSampler
from jrr_pipeline.ml.sampling.simans import SimANSSampler, simans_log_weights
from jrr_pipeline.ml.sampling.uniform import UniformWindowSampler

SAMPLERS: dict[str, type] = {
    "uniform": UniformWindowSampler, "denoised": DenoisedSampler, "simans": SimANSSampler,
}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def build_sampler(name: str, **options: Any) -> Sampler:
    """A sampler by name: ``uniform`` (rank window), ``denoised`` or ``simans``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    try:
        return SAMPLERS[name](**options)
    except TypeError as err:
        raise ValueError(f"sampler {name!r}: {err}") from None


__all__ = [
    "SAMPLERS",
    "Candidate",
    "DenoisedSampler",
    "Sampler",
    "SimANSSampler",
    "UniformWindowSampler",
    "build_sampler",
    "draw_uniform",
    "in_rank_order",
    "sample_without_replacement",
    "sampler_names",
    "simans_log_weights",
]
