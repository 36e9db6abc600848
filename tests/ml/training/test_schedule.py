"""Learning-rate schedule (by hand), parameter groups and the bf16 decision."""

from __future__ import annotations

import pytest
import torch

from jrr_pipeline.ml.precision import autocast_context, autocast_dtype, cpu_supports_bf16, use_bf16
from jrr_pipeline.ml.training import TrainConfig, lr_multiplier, train
from jrr_pipeline.ml.training.schedule import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    warmup_steps_for,
)

from .toy import ToyTask, make_examples, make_model


def test_lr_multiplier_by_hand() -> None:
    total, warmup = 10, warmup_steps_for(10, 0.2)
    assert warmup == 2
    assert lr_multiplier(0, total, warmup) == pytest.approx(0.5)  # first update: 1/W
    assert lr_multiplier(1, total, warmup) == pytest.approx(1.0)  # end of warm-up
    assert lr_multiplier(2, total, warmup) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_multiplier(5, total, warmup) == pytest.approx(5 / 8)
    assert lr_multiplier(9, total, warmup) == pytest.approx(1 / 8)  # last update
    assert lr_multiplier(10, total, warmup) == 0.0
    assert lr_multiplier(0, 5, 0) == pytest.approx(1.0)  # no warm-up
    assert warmup_steps_for(7, 0.1) == 1  # ceil


def test_scheduler_drives_optimizer_lr() -> None:
    model = make_model()
    opt = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(5e-4)
    assert seen[1] == pytest.approx(1e-3)
    assert seen[9] == pytest.approx(1e-3 / 8)


def test_loop_reports_the_scheduled_lr(tmp_path) -> None:
    logged: dict[int, dict[str, float]] = {}
    cfg = TrainConfig(max_steps=10, batch_size=4, lr=1e-2, warmup_ratio=0.2, log_every=1)
    train(ToyTask(make_model()), make_examples(40), cfg, tmp_path / "out",
          on_log=lambda step, m: logged.__setitem__(step, m), progress=False)
    assert sorted(logged) == list(range(1, 11))
    assert logged[1]["lr"] == pytest.approx(5e-3)
    assert logged[2]["lr"] == pytest.approx(1e-2)
    assert logged[10]["lr"] == pytest.approx(1e-2 / 8)
    assert {"loss", "lr", "examples_per_s", "grad_norm", "batch"} <= set(logged[1])
    assert logged[1]["examples_per_s"] > 0


def test_no_weight_decay_on_bias_and_layernorm() -> None:
    model = make_model()  # Linear, LayerNorm, ReLU, Dropout, Linear
    decay, no_decay = parameter_groups(model.named_parameters(), weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[4].weight)}
    assert len(no_decay["params"]) == 4  # two biases + LayerNorm weight and bias


def test_shared_parameters_listed_once() -> None:
    lin = torch.nn.Linear(2, 2)
    groups = parameter_groups([("a.weight", lin.weight), ("b.weight", lin.weight)], 0.0)
    assert sum(len(g["params"]) for g in groups) == 1


def test_bf16_setting() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("off", cpu) is False
    assert use_bf16("on", cpu) is True
    assert use_bf16("auto", cpu) is cpu_supports_bf16()


def test_autocast_context_runs_bf16_only_when_given_the_dtype() -> None:
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    assert autocast_dtype(True) is torch.bfloat16 and autocast_dtype(False) is None
    with autocast_context(cpu, autocast_dtype(True)):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(cpu, autocast_dtype(False)):
        assert (a @ b).dtype == torch.float32


def test_new_head_gets_its_own_learning_rate():
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "classifier": torch.nn.Linear(4, 1)})
    opt = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.01, head_lr_multiplier=50)
    head = {id(p) for p in model["classifier"].parameters()}
    lrs = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
    assert [lrs[i] for i in head] == pytest.approx([5e-2, 5e-2])
    assert {lr for i, lr in lrs.items() if i not in head} == {1e-3}
    plain = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    assert {g["lr"] for g in plain.param_groups} == {1e-3}
