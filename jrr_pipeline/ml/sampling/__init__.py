"""Negative samplers behind one interface, chosen by name (``build_sampler``).

The registry lives here, above the sampler modules, so ``base`` never imports its implementations.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

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
MAX_RANK = 2**31 - 1  # "no rank limit"


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


Picker = Callable[[list[Candidate], int, np.random.Generator, float | None], list[str]]


def negative_picker(spec: dict[str, Any]) -> Picker:
    """(pool, n, rng, positive score) -> doc ids drawn by the sampler ``spec`` names (a
    ``sampler_spec``): the one path the warm-up examples, the joint lists, the benches and the
    tests draw negatives through; an empty pool draws nothing."""
    options = dict(spec)
    sampler = build_sampler(options.pop("name", "uniform"), **options)
    return lambda pool, n, rng, positive: [
        c.doc_id for c in sampler.sample(pool, n, rng, positive)] if pool else []


def sampler_spec(name: str, *, rank_window: tuple[int, int] = (1, MAX_RANK), a: float = 1.0,
                 b: float = 0.0, tau_neg: float = 0.1) -> dict[str, Any]:
    """The ``build_sampler`` options of a stage's ``sampler`` setting: ``uniform`` draws from the
    rank window; ``simans`` and ``denoised`` take candidates ranked up to the window's end (the
    caller hands them the window's rows only)."""
    options = {"uniform": {"rank_start": rank_window[0], "rank_end": rank_window[1]},
               "simans": {"a": a, "b": b, "rank_end": rank_window[1]},
               "denoised": {"tau_neg": tau_neg, "rank_end": rank_window[1]}}
    if name not in options:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    return {"name": name, **options[name]}


__all__ = [
    "MAX_RANK",
    "SAMPLERS",
    "Candidate",
    "DenoisedSampler",
    "Sampler",
    "SimANSSampler",
    "UniformWindowSampler",
    "build_sampler",
    "draw_uniform",
    "in_rank_order",
    "negative_picker",
    "sample_without_replacement",
    "sampler_names",
    "sampler_spec",
    "simans_log_weights",
]
