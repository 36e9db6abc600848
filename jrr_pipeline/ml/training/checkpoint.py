"""Full training-state checkpoints, written atomically.

Layout of a state directory (only the latest state is kept):

    state_dir/step-00000050/state.json        TrainState (step, epoch, position in epoch, ...)
                           modules/<name>.pt  state_dict of each trainable module
                           optimizer.pt       AdamW state
                           scheduler.pt       LR scheduler state
                           rng.pt             python / numpy / torch (+cuda) RNG states, one per rank

A state is first written to a hidden temp directory (`ml.io.atomic_directory`) and renamed to
`step-N` only when complete, so a crash at any point leaves the previous `step-M` directory
untouched and loadable; the newest `step-*` directory is the state. Hidden leftovers of a killed
save are ignored and removed on the next save.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jrr_pipeline.ml.io import atomic_directory

STATE_FORMAT = 1
_STEP_PREFIX = "step-"


@dataclass
class TrainState:
    """Where a run is: `step` optimizer steps are done; the next batch is (`epoch`, `batch_in_epoch`).

    The other fields describe the run the state belongs to and are checked on resume.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    total_steps: int = 0
    seed: int = 0
    n_examples: int = 0
    batch_size: int = 0
    world_size: int = 1
    format: int = STATE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedState:
    """A training state read back from disk (all tensors on CPU)."""

    path: Path
    state: TrainState
    modules: dict[str, dict[str, torch.Tensor]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states of this process."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    random.setstate(rng["python"])
    npd = rng["numpy"]
    np.random.set_state(
        (npd["name"], npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"],
         npd["cached_gaussian"])
    )
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _fsync_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    with open(path, mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _torch_save(obj: Any, path: Path) -> None:
    _fsync_write(path, lambda handle: torch.save(obj, handle))


def _step_dirs(state_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for child in state_dir.iterdir() if state_dir.is_dir() else []:
        if child.is_dir() and child.name.startswith(_STEP_PREFIX):
            suffix = child.name[len(_STEP_PREFIX):]
            if suffix.isdigit():
                found.append((int(suffix), child))
    return sorted(found)


def latest_state_path(state_dir: Path) -> Path | None:
    """The newest complete state directory under `state_dir`, or None."""
    dirs = _step_dirs(Path(state_dir))
    return dirs[-1][1] if dirs else None


def save_training_state(
    state_dir: Path,
    state: TrainState,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng_states: list[dict[str, Any]],
) -> Path:
    """Atomically write the full training state as `state_dir/step-<step>` and drop older ones."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*state_dir.glob(f".{_STEP_PREFIX}*"), *state_dir.glob(".tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)  # what a killed save left (.tmp-*: older layout)
    final = state_dir / f"{_STEP_PREFIX}{state.step:08d}"
    # the same step may be saved twice (the final save right after a periodic one): swapped in
    with atomic_directory(final) as tmp:
        (tmp / "modules").mkdir()
        for name, module in modules.items():
            _torch_save(module.state_dict(), tmp / "modules" / f"{name}.pt")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(rng_states, tmp / "rng.pt")
        _fsync_write(
            tmp / "state.json",
            lambda h: h.write(json.dumps(dataclasses.asdict(state), indent=2, sort_keys=True)),
            "w",
        )
    for step, path in _step_dirs(state_dir):
        if step != state.step:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"training state is incomplete: missing file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise ValueError(f"training state file {path} is unreadable: {err}") from err


def load_training_state(state_dir: Path) -> LoadedState | None:
    """Read the newest state under `state_dir`; None when there is none.

    Raises ValueError / FileNotFoundError naming the file when a state is corrupt or incomplete.
    """
    path = latest_state_path(Path(state_dir))
    if path is None:
        return None
    state_file = path / "state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"training state is incomplete: missing file {state_file}")
    try:
        raw = json.loads(state_file.read_text())
        state = TrainState(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"training state file {state_file} is invalid: {err}") from err
    if state.format != STATE_FORMAT:
        raise ValueError(
            f"{state_file}: field 'format': unsupported state format {state.format} "
            f"(expected {STATE_FORMAT})"
        )
    modules = {
        p.stem: _load(p) for p in sorted((path / "modules").glob("*.pt"))
    }
    return LoadedState(
        path=path,
        state=state,
        modules=modules,
        optimizer=_load(path / "optimizer.pt"),
        scheduler=_load(path / "scheduler.pt"),
        rng=_load(path / "rng.pt"),
    )
