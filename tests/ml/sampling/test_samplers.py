"""Samplers: the rank window, the denoised pool, SimANS weights (hand values) and their draws."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from jrr_pipeline.ml.sampling import (
    SAMPLERS,
    Candidate,
    DenoisedSampler,
    SimANSSampler,
    UniformWindowSampler,
    build_sampler,
    draw_uniform,
    in_rank_order,
    sample_without_replacement,
    sampler_names,
    simans_log_weights,
)


def cands(scores, probs=None):
    probs = probs or [None] * len(scores)
    return [Candidate(f"d{i}", rank=i + 1, score=s, source="dense", ce_prob=p)
            for i, (s, p) in enumerate(zip(scores, probs, strict=True))]


def test_registry_builds_each_sampler_by_name():
    assert sampler_names() == ["denoised", "simans", "uniform"]
    assert isinstance(build_sampler("uniform", rank_start=3, rank_end=9), UniformWindowSampler)
    assert isinstance(build_sampler("simans", a=2.0, b=0.1), SimANSSampler)
    with pytest.raises(ValueError, match="unknown sampler 'bm25x'"):
        build_sampler("bm25x")
    with pytest.raises(ValueError, match="sampler 'uniform'"):
        build_sampler("uniform", tau=3)


def test_uniform_window_only_draws_inside_the_window_without_replacement():
    sampler = UniformWindowSampler(rank_start=3, rank_end=6)
    pool = cands([0.0] * 10)
    rng = np.random.default_rng(0)
    seen = Counter()
    for _ in range(400):
        picked = sampler.sample(pool, 2, rng)
        assert len({c.doc_id for c in picked}) == 2
        seen.update(c.rank for c in picked)
    assert set(seen) == {3, 4, 5, 6}
    assert min(seen.values()) > 150  # each of 4 ranks expected 200 times
    assert len(sampler.sample(pool, 10, rng)) == 4  # the window caps the count
    with pytest.raises(ValueError):
        UniformWindowSampler(rank_start=5, rank_end=2)


def test_denoised_sampler_keeps_only_low_probability_candidates():
    pool = cands([0.0] * 5, probs=[0.05, 0.9, 0.01, 0.5, 0.09])
    picked = DenoisedSampler(tau_neg=0.1).sample(pool, 5, np.random.default_rng(1))
    assert [c.doc_id for c in picked] == ["d0", "d2", "d4"]
    with pytest.raises(ValueError, match="no reranker probability"):
        DenoisedSampler().sample(cands([0.0, 1.0]), 1, np.random.default_rng(0))


def test_simans_log_weights_match_the_formula():
    scores = np.array([1.0, 2.0, 3.5])
    a, b, pos = 0.5, 0.25, 2.5
    raw = [math.exp(-a * (s - pos - b) ** 2) for s in scores]
    expected = [math.log(w / sum(raw)) for w in raw]
    assert simans_log_weights(scores, pos, a, b) == pytest.approx(expected, abs=1e-12)


def test_simans_is_stable_for_sharp_weights():
    # exp(-1000 * 10^2) underflows to 0 in linear space; the log-space weights still normalise
    logp = simans_log_weights(np.array([-8.0, 2.0, 2.1]), 2.0, 1000.0, 0.0)
    assert np.isfinite(logp[1:]).all() and np.exp(logp).sum() == pytest.approx(1.0)
    assert np.exp(logp[1]) > 0.99


def test_simans_prefers_scores_near_the_positive_plus_b():
    pool = cands([0.0, 1.0, 1.9, 2.1, 5.0])  # positive scores 2.0, b = 0
    sampler = SimANSSampler(a=2.0, b=0.0)
    rng = np.random.default_rng(0)
    counts = Counter(c.doc_id for _ in range(2000) for c in sampler.sample(pool, 1, rng, 2.0))
    assert counts["d2"] + counts["d3"] > 0.9 * 2000  # the two ambiguous ones
    assert counts["d4"] < 20 and counts["d0"] < 20  # likely false negative / too easy
    picked = sampler.sample(pool, 5, rng, 2.0)
    assert sorted(c.doc_id for c in picked) == ["d0", "d1", "d2", "d3", "d4"]  # no replacement
    with pytest.raises(ValueError, match="positive's score"):
        sampler.sample(pool, 1, rng)


def test_same_seed_same_draws():
    pool = cands(list(np.linspace(0, 3, 30)))
    draw = lambda seed: [c.doc_id for c in SimANSSampler(a=1.0).sample(  # noqa: E731
        pool, 5, np.random.default_rng(seed), 1.5)]
    assert draw(7) == draw(7) and draw(7) != draw(8)


class CountingRng:
    """Records the calls a caller makes on a numpy Generator (and forwards them)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple] = []

    def choice(self, *args, **kwargs):
        self.calls.append(("choice", args, tuple(sorted(kwargs.items()))))
        return self.rng.choice(*args, **kwargs)


def test_sample_without_replacement_is_one_choice_call_in_draw_or_pool_order():
    pool = [f"p{i}" for i in range(10)]
    reference = np.random.default_rng(3).choice(10, size=4, replace=False)
    rng = CountingRng(3)
    drawn = sample_without_replacement(pool, 4, rng)
    assert drawn == [pool[i] for i in reference]  # draw order, as warm-up negatives always were
    assert rng.calls == [("choice", (10,), (("replace", False), ("size", 4)))]
    assert sample_without_replacement(pool, 4, np.random.default_rng(3), pool_order=True) == [
        pool[i] for i in sorted(reference)]  # pool order, as denoising and AR2 refreshes were
    assert sorted(sample_without_replacement(pool, 99, np.random.default_rng(0))) == sorted(pool)


def test_nothing_to_draw_makes_no_rng_call():
    rng = CountingRng(0)
    assert sample_without_replacement([], 3, rng) == []
    assert sample_without_replacement(["a"], 0, rng) == []
    assert draw_uniform([], 2, rng) == [] and rng.calls == []


def test_draw_uniform_returns_picks_in_rank_order():
    pool = list(reversed(cands([0.0] * 8)))  # a pool that is not in rank order
    picked = draw_uniform(pool, 3, np.random.default_rng(5))
    assert picked == in_rank_order(picked) and len({c.doc_id for c in picked}) == 3
    reference = np.random.default_rng(5).choice(8, size=3, replace=False)
    assert {c.doc_id for c in picked} == {pool[i].doc_id for i in reference}


def test_sampler_base_module_imports_no_sampler():
    """The registry sits in the package __init__: base.py must not import its implementations
    (the former import circle base -> uniform/denoised/simans -> base)."""
    import ast
    import inspect

    from jrr_pipeline.ml.sampling import base

    imported = [node.module for node in ast.walk(ast.parse(inspect.getsource(base)))
                if isinstance(node, ast.ImportFrom) and node.module]
    assert not [m for m in imported if m.startswith("jrr_pipeline")]
    assert set(SAMPLERS) == set(sampler_names())
