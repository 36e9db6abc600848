"""Every module a task uses goes to the training device, frozen teachers included; each model's
gradient is clipped on its own."""

from __future__ import annotations

import math

import pytest
import torch

from jrr_pipeline.ml.modeling import (
    CrossEncoderReranker,
    DenseRetriever,
    RerankerConfig,
    RetrieverConfig,
)
from jrr_pipeline.ml.training.ar2 import AR2RetrieverTask, RerankerListTask
from jrr_pipeline.ml.training.loop import _clip_each, place_task
from jrr_pipeline.ml.training.rocketqav2 import RocketQAv2Task
from jrr_pipeline.ml.training.warmup import RerankerWarmupTask, RetrieverWarmupTask


def models(tiny_model_dir):
    retriever = DenseRetriever.from_pretrained(
        str(tiny_model_dir), RetrieverConfig(query_max_length=8, passage_max_length=12))
    reranker = CrossEncoderReranker.from_pretrained(str(tiny_model_dir),
                                                   RerankerConfig(max_length=20))
    return retriever, reranker


TASKS = {
    "warmup_retriever": lambda r, c: RetrieverWarmupTask(r),
    "warmup_reranker": lambda r, c: RerankerWarmupTask(c),
    "rocketqav2_dynamic": lambda r, c: RocketQAv2Task(r, c),
    "rocketqav2_static": lambda r, c: RocketQAv2Task(r, c, mode="static"),
    "ar2_ranker": lambda r, c: RerankerListTask(c),
    "ar2_retriever": lambda r, c: AR2RetrieverTask(r, c),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_parameter_a_task_uses_is_on_its_device(tiny_model_dir, name):
    """The meta device stands in for a GPU: a module the loop forgot would stay on the CPU."""
    task = TASKS[name](*models(tiny_model_dir))
    place_task(task, torch.device("meta"))
    assert task.device == torch.device("meta")
    used = [v for v in vars(task).values() if isinstance(v, torch.nn.Module)]
    assert used
    for module in used:
        for pname, param in module.named_parameters():
            assert param.device == task.device, f"{name}: {type(module).__name__}.{pname}"


def test_each_models_gradient_is_clipped_on_its_own():
    big, small = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    for p in big.parameters():
        p.grad = torch.full_like(p, 10.0)
    for p in small.parameters():
        p.grad = torch.full_like(p, 0.01)
    small_before = [p.grad.clone() for p in small.parameters()]
    norms = _clip_each({"big": big, "small": small}, max_norm=1.0)
    assert norms["big"] == pytest.approx(10.0 * math.sqrt(20), rel=1e-5)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in big.parameters()))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    # one clip over both models would have scaled the small gradient by ~1/45 too
    for before, p in zip(small_before, small.parameters(), strict=True):
        assert torch.equal(before, p.grad)
    assert all(math.isnan(v) for v in _clip_each({"big": big}, 0.0).values())
