"""bench/rerank_settings.py: its pure helpers (argument lists, the choice on dev only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rerank_settings.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rerank_settings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lists_and_weights_parse(bench) -> None:
    assert bench.parse_list("20, 100", int, "depths") == [20, 100]
    assert bench.parse_weights("0.3,1") == [0.3, 1.0]
    with pytest.raises(ValueError, match="--weights"):
        bench.parse_weights("0.5,1.5")
    with pytest.raises(ValueError, match="--depths: expected"):
        bench.parse_list("20,x", int, "depths")
    with pytest.raises(ValueError, match="no values"):
        bench.parse_list(" , ", float, "weights")


def test_best_setting_is_chosen_on_dev_never_on_test(bench) -> None:
    rows = [
        {"depth": 20, "fusion_weight": 0.5, "dev": {"nDCG@10": 0.70}, "test": {"nDCG@10": 0.80}},
        {"depth": 20, "fusion_weight": 1.0, "dev": {"nDCG@10": 0.72}, "test": {"nDCG@10": 0.60}},
        {"depth": 100, "fusion_weight": 0.5, "dev": {"nDCG@10": 0.72}, "test": {"nDCG@10": 0.90}},
    ]
    best = bench.best_on_dev(rows)
    assert best is rows[1]  # the dev maximum; the tie with the deeper setting keeps the first
    assert bench.best_on_dev(rows[:1] + rows[2:]) is rows[2]
    with pytest.raises(ValueError, match="no dev nDCG@10"):
        bench.best_on_dev([{"test": {"nDCG@10": 0.9}}])
    with pytest.raises(ValueError, match="no settings"):
        bench.best_on_dev([])
