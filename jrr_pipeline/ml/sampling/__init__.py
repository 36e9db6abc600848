"""Negative samplers behind one interface, chosen by name (``build_sampler``)."""

from jrr_pipeline.ml.sampling.base import Candidate, Sampler, build_sampler, sampler_names
from jrr_pipeline.ml.sampling.denoised import DenoisedSampler
from jrr_pipeline.ml.sampling.simans import SimANSSampler, simans_log_weights
from jrr_pipeline.ml.sampling.uniform import UniformWindowSampler

__all__ = [
    "Candidate",
    "DenoisedSampler",
    "Sampler",
    "SimANSSampler",
    "UniformWindowSampler",
    "build_sampler",
    "sampler_names",
    "simans_log_weights",
]
