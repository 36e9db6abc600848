"""The compute resource's dtype decision agrees with the training loop's."""

from __future__ import annotations

import torch

from jrr_pipeline.ml.precision import cpu_supports_bf16, use_bf16
from jrr_pipeline.resources import Compute


def test_explicit_dtype_wins() -> None:
    assert Compute(device="cpu", dtype="bf16").use_bf16() is True
    assert Compute(device="cpu", dtype="fp32").use_bf16() is False


def test_auto_dtype_follows_the_cpu_flags() -> None:
    auto = Compute(device="cpu", dtype="auto").use_bf16()
    assert auto is cpu_supports_bf16()
    assert auto is use_bf16("auto", torch.device("cpu"))
