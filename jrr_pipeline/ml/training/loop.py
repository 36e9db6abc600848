"""The generic training loop: deterministic batches -> task.loss -> AdamW, with resumable state.

A `TrainingTask` owns its models and knows how to turn a list of examples into a loss; `train`
owns everything else: data order, optimizer and schedule, bf16 autocast, gradient clipping, DDP,
periodic full-state checkpoints (resume is bit-exact on CPU), metrics and the final atomic save.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from jrr_pipeline.ml.io import replace_dir_atomic
from jrr_pipeline.ml.precision import autocast_context, autocast_dtype, use_bf16

from .checkpoint import (
    TrainState,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from .config import TrainConfig
from .data import batches_per_epoch, check_batch_size, epoch_order, local_batch
from .distributed import cleanup_distributed, init_distributed, training_device, world_info
from .schedule import build_optimizer, build_scheduler


@runtime_checkable
class TrainingTask(Protocol):
    """What `train` needs from a task.

    `modules()` must return the same module objects on every call; `loss(batch)` receives this
    rank's share of a global batch (a list of examples) and must put its tensors on the modules'
    device; `save(output_dir)` must create `output_dir` (it does not exist yet when called).
    """

    def modules(self) -> dict[str, nn.Module]: ...

    def loss(self, batch: list) -> tuple[Tensor, dict[str, float]]: ...

    def save(self, output_dir: Path) -> None: ...


@dataclass
class TrainResult:
    """Outcome of `train` (identical on every rank except `history`, which only rank 0 fills)."""

    output_dir: Path
    completed: bool
    step: int
    total_steps: int
    epoch: int
    resumed_from_step: int | None
    final_loss: float | None
    wall_s: float
    bf16: bool
    world_size: int
    state_path: Path | None
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class _TaskModule(nn.Module):
    """Holds the task's modules so one forward() computes the whole loss (what DDP needs)."""

    def __init__(self, task: TrainingTask) -> None:
        super().__init__()
        self.task_modules = nn.ModuleDict(task.modules())
        self._task = [task]  # a list, so a task that is itself an nn.Module is not registered

    def forward(self, batch: list) -> tuple[Tensor, dict[str, float]]:
        return self._task[0].loss(batch)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Turn on non-reentrant activation checkpointing in every HF-style submodule; returns how many.

    Uses transformers' `activation_checkpointing_enable` (>= 5.x) or the older
    `gradient_checkpointing_enable`. Non-reentrant checkpointing works with DDP and keeps the
    RNG state, so dropout masks (and the trained weights) are the same as without it.
    """
    names = ("activation_checkpointing_enable", "gradient_checkpointing_enable")

    def has_method(m: nn.Module) -> bool:
        return any(hasattr(m, n) for n in names)

    targets = [module] if has_method(module) else [m for m in module.modules() if has_method(m)]
    for target in targets:
        if hasattr(target, "activation_checkpointing_enable"):
            target.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
            continue
        try:
            target.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        except TypeError:
            target.gradient_checkpointing_enable()
    return len(targets)


def _reduce_mean(values: dict[str, float], device: torch.device, world: int) -> dict[str, float]:
    if world <= 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / world for k, v in zip(keys, tensor.tolist(), strict=True)}


def _check_resume(loaded_state: TrainState, expected: TrainState, path: Path) -> None:
    for name in ("seed", "n_examples", "batch_size", "total_steps"):
        old, new = getattr(loaded_state, name), getattr(expected, name)
        if old != new:
            raise ValueError(
                f"{path / 'state.json'}: field '{name}': the saved state has {old} but this run "
                f"has {new}; use a fresh state_dir or the original settings"
            )


def train(
    task: TrainingTask,
    examples: Sequence,
    config: TrainConfig,
    output_dir: Path,
    state_dir: Path | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    *,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train `task` on `examples`, then save it to `output_dir` atomically (rank 0 only).

    Resumes from the newest state in `state_dir` when there is one, and saves the full state
    there every `config.checkpoint_every` steps and at the end. Under torchrun (WORLD_SIZE > 1) a
    process group is created if needed (nccl on CUDA, gloo on CPU), the modules are wrapped in DDP
    and each global batch of `config.batch_size` examples is split evenly across ranks.
    The global python/numpy/torch RNGs are reseeded with `config.seed + rank` at the start (seed
    before building the task's models if their initialisation must be reproducible too).
    `stop_after_steps` is a test hook: return (completed=False, nothing saved beyond the periodic
    checkpoints) once that many steps are done in total, as if the process had been killed.
    """
    if len(examples) == 0:
        raise ValueError("train: no training examples")
    if not isinstance(task, TrainingTask):
        raise TypeError(f"train: {type(task).__name__} does not implement TrainingTask")
    device = training_device()
    created_group = init_distributed(device)
    try:
        return _train(
            task, examples, config, Path(output_dir), state_dir, on_log, progress,
            stop_after_steps, device,
        )
    finally:
        if created_group:
            cleanup_distributed()


def _train(
    task: TrainingTask,
    examples: Sequence,
    config: TrainConfig,
    output_dir: Path,
    state_dir: Path | None,
    on_log: Callable[[int, dict[str, float]], None] | None,
    progress: bool,
    stop_after_steps: int | None,
    device: torch.device,
) -> TrainResult:
    started = time.perf_counter()
    rank, world = world_info()
    check_batch_size(config.batch_size, world)
    n = len(examples)
    per_epoch = batches_per_epoch(n, config.batch_size, world)
    if per_epoch == 0:
        raise ValueError(
            f"train: {n} examples give no batch of a size divisible by the world size {world}"
        )
    total = config.max_steps if config.max_steps is not None else config.epochs * per_epoch
    state = TrainState(
        total_steps=total, seed=config.seed, n_examples=n,
        batch_size=config.batch_size, world_size=world,
    )
    # Different ranks draw different dropout masks; the data order only depends on config.seed.
    seed_everything(config.seed + rank)

    modules = task.modules()
    container = _TaskModule(task).to(device)
    if config.gradient_checkpointing:
        for module in modules.values():
            enable_gradient_checkpointing(module)
    optimizer = build_optimizer(container.named_parameters(), config.lr, config.weight_decay,
                                config.head_lr_multiplier, config.module_lr_multipliers)
    scheduler = build_scheduler(optimizer, total, config.warmup_ratio)

    resumed_from: int | None = None
    loaded = load_training_state(Path(state_dir)) if state_dir is not None else None
    if loaded is not None:
        _check_resume(loaded.state, state, loaded.path)
        if set(loaded.modules) != set(modules):
            raise ValueError(
                f"{loaded.path / 'modules'}: saved modules {sorted(loaded.modules)} do not match "
                f"the task's modules {sorted(modules)}"
            )
        for name, module in modules.items():
            module.load_state_dict(loaded.modules[name])
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        if len(loaded.rng) == world:
            restore_rng_state(loaded.rng[rank])
        else:  # world size changed: exact replay is impossible, stay deterministic anyway
            seed_everything(config.seed + rank + loaded.state.step)
        state.step, state.epoch = loaded.state.step, loaded.state.epoch
        state.batch_in_epoch = loaded.state.batch_in_epoch
        resumed_from = state.step

    model: nn.Module = container
    backward_done = bool(getattr(task, "backward_done", False))
    if backward_done and world > 1:
        raise ValueError("train: a task that runs its own backward (GradCache) cannot run under "
                         "DDP; use a single process or turn gradient caching off")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            container,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. BERT's pooler is unused by a mean-pooled retriever
        )
    model.train()
    bf16 = use_bf16(config.bf16, device)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    is_main = rank == 0

    history: list[tuple[int, dict[str, float]]] = []
    window = {"loss": 0.0, "steps": 0, "examples": 0, "t0": time.perf_counter()}
    task_sums: dict[str, float] = {}
    final_loss: float | None = None
    state_path = None
    orders: dict[int, np.ndarray] = {}
    bar = tqdm(
        total=total, initial=state.step, disable=not (progress and is_main),
        desc="train", dynamic_ncols=True,
    )
    try:
        while state.step < total:
            if stop_after_steps is not None and state.step >= stop_after_steps:
                bar.close()
                return TrainResult(
                    output_dir, False, state.step, total, state.epoch, resumed_from, final_loss,
                    time.perf_counter() - started, bf16, world, state_path, history,
                )
            if state.epoch not in orders:
                orders = {state.epoch: epoch_order(n, config.seed, state.epoch)}
            batch = local_batch(
                examples, orders[state.epoch], state.batch_in_epoch, config.batch_size, rank, world
            )
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, autocast_dtype(bf16)):
                loss, task_metrics = model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"train: non-finite loss {loss.item()} at step {state.step + 1}"
                )
            if not backward_done:
                loss.backward()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                if config.max_grad_norm > 0 else math.nan
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()

            state.step += 1
            state.batch_in_epoch += 1
            if state.batch_in_epoch >= per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
            window["loss"] += float(loss.detach())
            window["steps"] += 1
            window["examples"] += len(batch) * world
            for key, value in task_metrics.items():
                task_sums[key] = task_sums.get(key, 0.0) + float(value)
            bar.update(1)

            if state.step % config.log_every == 0 or state.step == total:
                steps = window["steps"]
                local = {"loss": window["loss"] / steps, "grad_norm": grad_norm}
                local.update({k: v / steps for k, v in task_sums.items()})
                metrics = _reduce_mean(local, device, world)
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                metrics.update({
                    "lr": lr, "examples_per_s": window["examples"] / elapsed,
                    "epoch": state.step / per_epoch, "peak_rss_gb": peak_rss_gb(),
                })
                final_loss = metrics["loss"]
                if is_main:
                    history.append((state.step, metrics))
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
                    if on_log is not None:
                        on_log(state.step, metrics)
                window = {"loss": 0.0, "steps": 0, "examples": 0, "t0": time.perf_counter()}
                task_sums = {}

            if state_dir is not None and (
                state.step % config.checkpoint_every == 0 or state.step == total
            ):
                state_path = _checkpoint(
                    Path(state_dir), state, modules, optimizer, scheduler, world, is_main
                )
    finally:
        bar.close()

    if is_main:
        replace_dir_atomic(output_dir, task.save)
    if world > 1:
        dist.barrier()
    return TrainResult(
        output_dir, True, state.step, total, state.epoch, resumed_from, final_loss,
        time.perf_counter() - started, bf16, world, state_path, history,
    )


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _checkpoint(
    state_dir: Path,
    state: TrainState,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    world: int,
    is_main: bool,
) -> Path | None:
    rng = capture_rng_state()
    rng_states = [rng]
    if world > 1:
        rng_states = [None] * world
        dist.all_gather_object(rng_states, rng)
    path = None
    if is_main:
        path = save_training_state(state_dir, state, modules, optimizer, scheduler, rng_states)
    if world > 1:
        dist.barrier()  # nobody resumes from, or races ahead of, a half-written state
    return path
