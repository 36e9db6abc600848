"""Reranker / first-stage score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from jrr_pipeline.ml.fusion import fuse, zscore


def test_zscore_and_fuse_by_hand():
    ce, first = np.array([2.0, 0.0, -2.0]), np.array([0.1, 0.3, 0.2])
    assert zscore(ce) == pytest.approx([1.2247449, 0.0, -1.2247449])
    fused = fuse(ce, first, 0.5)
    expected = 0.5 * zscore(ce) + 0.5 * zscore(first)
    assert fused == pytest.approx(expected)
    assert list(np.argsort(-fused)) == [1, 0, 2]  # doc 1: second for the reranker, first before it
    assert fuse(ce, first, 1.0) == pytest.approx(ce)
    assert list(np.argsort(-fuse(ce, first, 0.0))) == [1, 2, 0]


def test_constant_scores_and_bad_input():
    assert zscore(np.array([3.0, 3.0])) == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError):
        fuse(np.zeros(2), np.zeros(3), 0.5)
    with pytest.raises(ValueError):
        fuse(np.zeros(2), np.zeros(2), 1.5)
