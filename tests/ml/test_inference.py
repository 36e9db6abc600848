"""Inference helpers take plain arguments (a device, a bf16 flag), not the assets' resources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jrr_pipeline.ml.inference import autocast_dtype, encode_queries, load_retriever

QUERIES = ["vitamin d and bone fractures", "how do cells divide"]


def test_load_retriever_and_encode_queries(tiny_model_dir: Path) -> None:
    torch.set_num_threads(1)
    retriever = load_retriever(tiny_model_dir, "cpu")
    assert not retriever.training and next(retriever.parameters()).device.type == "cpu"
    fp32 = encode_queries(retriever, QUERIES, bf16=False)
    np.testing.assert_array_equal(fp32, retriever.embed(QUERIES, kind="query", batch_size=128))
    bf16 = encode_queries(retriever, QUERIES, bf16=True)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_array_equal(
        bf16, retriever.embed(QUERIES, kind="query", batch_size=128, autocast_dtype=torch.bfloat16))
    assert autocast_dtype(True) is torch.bfloat16 and autocast_dtype(False) is None
