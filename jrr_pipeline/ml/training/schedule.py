"""Optimizer and learning-rate schedule for the training loop."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

# Parameter-name fragments that are never weight-decayed (HF BERT-style names and common variants).
_NO_DECAY_MARKERS = ("bias", "LayerNorm", "layer_norm", "layernorm", "norm.weight")


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Number of warm-up steps: ceil(warmup_ratio * total_steps)."""
    return math.ceil(warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor used by the optimizer update with 0-based index `step`.

    Linear warm-up then linear decay, chosen so that no update inside the run uses lr 0:
    - warm-up (step < W): (step + 1) / W, reaching 1.0 at the last warm-up step W - 1;
    - decay (W <= step < T): (T - step) / (T - W), 1.0 at step W and 1 / (T - W) at the last step;
    - step >= T: 0.
    """
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return (total_steps - step) / (total_steps - warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_multiplier`; call `.step()` once after each optimizer step."""
    warmup = warmup_steps_for(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup)
    )


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or any(marker in name for marker in _NO_DECAY_MARKERS)


def parameter_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict]:
    """Split trainable parameters into a decayed group and a no-decay group (biases, norms).

    Parameters shared under several names are listed once.
    """
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in named_parameters:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


HEAD_PREFIXES = ("classifier.",)


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
    head_lr_multiplier: float = 1.0, module_lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights.

    A parameter's lr is ``lr * head_lr_multiplier`` (new heads) ``* module_lr_multipliers[m]``
    where ``m`` is the task module it belongs to (e.g. ``{"reranker": 2.0}`` in joint training).
    """
    modules = module_lr_multipliers or {}
    by_factor: dict[float, list[tuple[str, nn.Parameter]]] = {}
    for name, param in named_parameters:
        factor = head_lr_multiplier if _is_head(name) else 1.0
        for module, mult in modules.items():
            if name.startswith(f"{module}.") or f".{module}." in f".{name}":
                factor *= mult
                break
        by_factor.setdefault(factor, []).append((name, param))
    groups = []
    for factor, named in by_factor.items():
        for group in parameter_groups(named, weight_decay):
            if group["params"]:
                groups.append({**group, "lr": lr * factor} if factor != 1.0 else group)
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return torch.optim.AdamW(groups, lr=lr)


def _is_head(name: str) -> bool:
    return any(name.startswith(p) or f".{p}" in name for p in HEAD_PREFIXES)
