"""The generic training loop: deterministic batches -> task.loss -> AdamW, with resumable state.

A `TrainingTask` owns its models and knows how to turn a list of examples into a loss; `train`
owns everything else: data order, optimizer and schedule, bf16 autocast, gradient clipping, DDP,
periodic full-state checkpoints (resume is bit-exact on CPU), metrics and the final atomic save.
"""

from __future__ import annotations

import contextlib
import gc
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
from .data import BatchOrder, RandomOrder, check_batch_size, local_batch
from .distributed import cleanup_distributed, init_distributed, training_device, world_info
from .schedule import build_optimizer, build_scheduler


@runtime_checkable
class TrainingTask(Protocol):
    """What `train` needs from a task.

    `modules()` must return the same module objects on every call; `loss(batch)` receives this
    rank's share of a global batch (a list of examples) and must put its tensors on the modules'
    device; `save(output_dir)` must create `output_dir` (it does not exist yet when called).
    A task whose loss also reads modules it does not train (a frozen teacher) returns them from
    an optional `frozen_modules()`, so they are moved to the training device too.
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
    module_lr_multipliers: dict[str, float] | None = None,
    batching: BatchOrder | None = None,
) -> TrainResult:
    """Train `task` on `examples`, then save it to `output_dir` atomically (rank 0 only).

    Runs `config.max_steps` optimizer steps, or `config.epochs` epochs when that is 0 or None.
    Resumes from the newest state in `state_dir` when there is one, and saves the full state
    there every `config.checkpoint_every` steps and at the end. Under torchrun (WORLD_SIZE > 1) a
    process group is created if needed (nccl on CUDA, gloo on CPU), the modules are wrapped in DDP
    and each global batch of `config.batch_size` examples is split evenly across ranks.
    The global python/numpy/torch RNGs are reseeded with `config.seed + rank` at the start (seed
    before building the task's models if their initialisation must be reproducible too).
    `module_lr_multipliers` ({task module: lr factor}) scales the learning rate of a task module's
    parameters (joint training: the two models have their own rates).
    `batching` decides which examples form each batch (default: a seeded shuffle per epoch,
    ``data.RandomOrder``); it must be a pure function of the epoch, so resume and DDP hold.
    `stop_after_steps` is a test hook: return (completed=False, nothing saved beyond the periodic
    checkpoints) once that many steps are done in total, as if the process had been killed.
    """
    if len(examples) == 0:
        raise ValueError("train: no training examples")
    if not isinstance(task, TrainingTask):
        raise TypeError(f"train: {type(task).__name__} does not implement TrainingTask")
    device = training_device()
    created_group = init_distributed(device)
    run = None
    try:
        batching = batching or RandomOrder(len(examples), config.seed)
        run = _prepare(task, examples, config, device, module_lr_multipliers or {}, batching)
        if state_dir is not None:
            _resume(run, Path(state_dir))
        _wrap_for_training(run)
        return _train(run, Path(output_dir), state_dir, on_log, progress, stop_after_steps)
    finally:
        if run is not None and run.world > 1:
            # DDP's reducer holds the process group: freed only after the group was destroyed
            # (when this frame goes), its gloo teardown could wait forever on the other rank.
            run.model = None
            gc.collect()
        if created_group:
            cleanup_distributed()


@dataclass
class _Run:
    """One `train` call: its task, models, optimizer and where it stands."""

    task: TrainingTask
    examples: Sequence
    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    per_epoch: int
    state: TrainState
    modules: dict[str, nn.Module]
    container: _TaskModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    started: float
    batching: BatchOrder
    model: nn.Module | None = None  # the container, DDP-wrapped under torchrun
    bf16: bool = False
    backward_done: bool = False  # the task runs its own backward (GradCache)
    resumed_from: int | None = None
    state_path: Path | None = None
    final_loss: float | None = None
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    orders: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.state.total_steps

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def result(self, output_dir: Path, completed: bool) -> TrainResult:
        return TrainResult(
            output_dir, completed, self.state.step, self.total, self.state.epoch,
            self.resumed_from, self.final_loss, time.perf_counter() - self.started, self.bf16,
            self.world, self.state_path, self.history,
        )


@dataclass
class _Window:
    """Sums over the steps since the last logged one."""

    loss: float = 0.0
    steps: int = 0
    examples: int = 0
    task_sums: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, examples: int, task_metrics: dict[str, float]) -> None:
        self.loss += loss
        self.steps += 1
        self.examples += examples
        for key, value in task_metrics.items():
            self.task_sums[key] = self.task_sums.get(key, 0.0) + float(value)

    def means(self, grad_norm: dict[str, float]) -> dict[str, float]:
        local = {"loss": self.loss / self.steps}
        if len(grad_norm) == 1:
            local["grad_norm"] = next(iter(grad_norm.values()))
        else:
            local.update({f"grad_norm_{name}": norm for name, norm in grad_norm.items()})
        local.update({k: v / self.steps for k, v in self.task_sums.items()})
        return local


def _prepare(task: TrainingTask, examples: Sequence, config: TrainConfig, device: torch.device,
             module_lr_multipliers: dict[str, float], batching: BatchOrder) -> _Run:
    """Step count, seeds, the task's modules on ``device``, optimizer and schedule."""
    started = time.perf_counter()
    rank, world = world_info()
    check_batch_size(config.batch_size, world)
    n = len(examples)
    per_epoch = batching.batches_per_epoch(config.batch_size, world)
    if per_epoch == 0:
        raise ValueError(
            f"train: {n} examples give no batch of a size divisible by the world size {world}"
        )
    total = config.max_steps or config.epochs * per_epoch
    state = TrainState(
        total_steps=total, seed=config.seed, n_examples=n,
        batch_size=config.batch_size, world_size=world,
    )
    # Different ranks draw different dropout masks; the data order only depends on config.seed.
    seed_everything(config.seed + rank)

    modules = task.modules()
    container = _TaskModule(task).to(device)
    place_task(task, device)
    if config.gradient_checkpointing:
        for module in modules.values():
            enable_gradient_checkpointing(module)
    optimizer = build_optimizer(container.named_parameters(), config.lr, config.weight_decay,
                                config.head_lr_multiplier, module_lr_multipliers)
    scheduler = build_scheduler(optimizer, total, config.warmup_ratio)
    return _Run(task, examples, config, device, rank, world, per_epoch, state, modules, container,
                optimizer, scheduler, started, batching)


def _resume(run: _Run, state_dir: Path) -> None:
    """Continue from the newest saved state in ``state_dir``, if there is one."""
    loaded = load_training_state(state_dir)
    if loaded is None:
        return
    _check_resume(loaded.state, run.state, loaded.path)
    if set(loaded.modules) != set(run.modules):
        raise ValueError(
            f"{loaded.path / 'modules'}: saved modules {sorted(loaded.modules)} do not match "
            f"the task's modules {sorted(run.modules)}"
        )
    for name, module in run.modules.items():
        module.load_state_dict(loaded.modules[name])
    run.optimizer.load_state_dict(loaded.optimizer)
    run.scheduler.load_state_dict(loaded.scheduler)
    if len(loaded.rng) == run.world:
        restore_rng_state(loaded.rng[run.rank])
    else:  # world size changed: exact replay is impossible, stay deterministic anyway
        seed_everything(run.config.seed + run.rank + loaded.state.step)
    run.state.step, run.state.epoch = loaded.state.step, loaded.state.epoch
    run.state.batch_in_epoch = loaded.state.batch_in_epoch
    run.resumed_from = run.state.step


def _wrap_for_training(run: _Run) -> None:
    """DDP under torchrun, train mode, and the bf16 decision."""
    run.backward_done = bool(getattr(run.task, "backward_done", False))
    if run.backward_done and run.world > 1:
        raise ValueError("train: a task that runs its own backward (GradCache) cannot run under "
                         "DDP; use a single process or turn gradient caching off")
    run.model = run.container
    if run.world > 1:
        run.model = nn.parallel.DistributedDataParallel(
            run.container,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. BERT's pooler is unused by a mean-pooled retriever
        )
    run.model.train()
    run.bf16 = use_bf16(run.config.bf16, run.device)


def _train(
    run: _Run,
    output_dir: Path,
    state_dir: Path | None,
    on_log: Callable[[int, dict[str, float]], None] | None,
    progress: bool,
    stop_after_steps: int | None,
) -> TrainResult:
    config, state = run.config, run.state
    window = _Window()
    bar = tqdm(
        total=run.total, initial=state.step, disable=not (progress and run.is_main),
        desc="train", dynamic_ncols=True,
    )
    try:
        while state.step < run.total:
            if stop_after_steps is not None and state.step >= stop_after_steps:
                return run.result(output_dir, completed=False)
            grad_norm, lr = _step(run, window)
            bar.update(1)
            if state.step % config.log_every == 0 or state.step == run.total:
                _log(run, window, grad_norm, lr, bar, on_log)
                window = _Window()
            if state_dir is not None and (
                state.step % config.checkpoint_every == 0 or state.step == run.total
            ):
                run.state_path = _checkpoint(
                    Path(state_dir), state, run.modules, run.optimizer, run.scheduler, run.world,
                    run.is_main,
                )
    finally:
        bar.close()

    if run.is_main:
        replace_dir_atomic(output_dir, run.task.save)
    if run.world > 1:
        dist.barrier()
    return run.result(output_dir, completed=True)


def _step(run: _Run, window: _Window) -> tuple[dict[str, float], float]:
    """One optimizer step on the next batch; returns (each module's gradient norm before
    clipping, lr used)."""
    config, state = run.config, run.state
    if state.epoch not in run.orders:
        run.orders = {state.epoch: run.batching.order(state.epoch, config.batch_size)}
    batch = local_batch(
        run.examples, run.orders[state.epoch], state.batch_in_epoch, config.batch_size, run.rank,
        run.world,
    )
    run.optimizer.zero_grad(set_to_none=True)
    with autocast_context(run.device, autocast_dtype(run.bf16)):
        loss, task_metrics = run.model(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"train: non-finite loss {loss.item()} at step {state.step + 1}")
    if not run.backward_done:
        loss.backward()
    grad_norm = _clip_each(run.modules, config.max_grad_norm)
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()

    state.step += 1
    state.batch_in_epoch += 1
    if state.batch_in_epoch >= run.per_epoch:
        state.epoch += 1
        state.batch_in_epoch = 0
    window.add(float(loss.detach()), len(batch) * run.world, task_metrics)
    return grad_norm, lr


def _clip_each(modules: dict[str, nn.Module], max_norm: float) -> dict[str, float]:
    """Clip each module's gradient norm to ``max_norm`` on its own (one model's large gradient
    must not throttle the other's, as AR2's code clips per model); returns the norms before
    clipping (NaN with clipping off)."""
    norms = {}
    for name, module in modules.items():
        if next(module.parameters(), None) is None:
            continue  # state only (a negative cache's buffers): nothing to clip
        params = [p for p in module.parameters() if p.grad is not None]
        norms[name] = (float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                       if max_norm > 0 and params else math.nan)
    return norms


def place_task(task: TrainingTask, device: torch.device) -> None:
    """Every module the task uses on ``device``: the trained ones and those it only reads
    (``frozen_modules()``, e.g. a frozen teacher); sets ``task.device``."""
    for module in (*task.modules().values(),
                   *getattr(task, "frozen_modules", dict)().values()):
        module.to(device)
    with contextlib.suppress(AttributeError):  # e.g. a task with __slots__
        task.device = device


def _log(run: _Run, window: _Window, grad_norm: dict[str, float], lr: float, bar,
         on_log: Callable[[int, dict[str, float]], None] | None) -> None:
    """Metrics of the window (averaged over ranks) into the history, the bar and ``on_log``."""
    metrics = _reduce_mean(window.means(grad_norm), run.device, run.world)
    elapsed = max(time.perf_counter() - window.t0, 1e-9)
    metrics.update({
        "lr": lr, "examples_per_s": window.examples / elapsed,
        "epoch": run.state.step / run.per_epoch, "peak_rss_gb": peak_rss_gb(),
    })
    run.final_loss = metrics["loss"]
    if run.is_main:
        run.history.append((run.state.step, metrics))
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        if on_log is not None:
            on_log(run.state.step, metrics)


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
