"""Training hyper-parameters (`TrainConfig`) and their validated construction from plain dicts."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class TrainConfig:
    """Hyper-parameters of the generic training loop (`jrr_pipeline.ml.training.loop.train`)."""

    epochs: int = field(default=1, metadata={"help": "Passes over the training examples."})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps to run; when set it overrides `epochs` (epochs repeat)."},
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "Global batch size (examples per optimizer step, summed over DDP ranks)."},
    )
    lr: float = field(default=2e-5, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (never applied to biases/LayerNorm)."}
    )
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "Fraction of the steps with a linear learning-rate warm-up."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the global gradient norm to this (<= 0 disables)."}
    )
    bf16: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "bf16 autocast: auto = when the device supports it (CUDA bf16, or a CPU with "
            "AMX / avx512_bf16), on = always, off = never."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory in the transformer encoders."}
    )
    head_lr_multiplier: float = field(
        default=1.0,
        metadata={"help": "lr factor for freshly initialised heads (parameters named "
                  "'classifier.*'): a random 384->1 head at lr 2e-5 barely moves in 100 steps, so "
                  "the listwise loss sits at ln(n) while the encoder waits for it."},
    )
    module_lr_multipliers: dict = field(
        default_factory=dict,
        metadata={"help": "lr factor per task module, e.g. {\"reranker\": 2.0} in joint training "
                  "(separate learning rates for the two models)."},
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of the data order and of the python/numpy/torch RNGs."}
    )
    checkpoint_every: int = field(
        default=50,
        metadata={"help": "Save the full training state every N steps (only the latest is kept)."},
    )
    log_every: int = field(default=10, metadata={"help": "Report metrics every N steps."})
    num_workers: int = field(
        default=0,
        metadata={"help": "Reserved for data-loading workers; batches are built in-process (0)."},
    )

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1 or null"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("bf16", self.bf16 in ("auto", "on", "off"), "must be one of auto, on, off"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ValueError(f"TrainConfig field '{name}': {problem} (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "TrainConfig") -> TrainConfig:
        """Build from a dict, rejecting unknown keys and wrongly typed values.

        `source` names where the dict came from (e.g. a JSON file and key) for error messages.
        """
        return dataclass_from_dict(cls, data, source)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def dataclass_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """Instantiate dataclass `cls` from `data`, with errors naming `source` and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{source}: field '{unknown[0]}': unknown field (known: {', '.join(sorted(names))})"
        )
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            raise ValueError(
                f"{source}: field '{key}': expected {hints[key]}, got {value!r}"
            )
    try:
        return cls(**data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
