"""``TrainConfig``: the knobs of the generic training loop (``ml.training.loop.train``).

The warm-up stages' settings extend it (``ml.settings``), so the loop reads the same object the
pipeline configured; joint training builds one per model phase (``JointSettings.train_config``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from jrr_pipeline.ml.settings.base import Settings, knob


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Hyper-parameters of the generic training loop."""

    stage: ClassVar[str] = "train"

    epochs: int = knob(1, "passes over the training examples", ge=1)
    max_steps: int = knob(0, "optimizer steps to run; 0 = as many as `epochs` give (when set, "
                             "epochs repeat as needed)", ge=0)
    batch_size: int = knob(16, "examples per optimizer step, summed over all training processes",
                           ge=1)
    lr: float = knob(2e-5, "peak AdamW learning rate", gt=0)
    weight_decay: float = knob(0.01, "AdamW weight decay (never on biases and norms)", ge=0)
    warmup_ratio: float = knob(0.1, "share of the steps with a linear learning-rate warm-up",
                               ge=0, lt=1)
    max_grad_norm: float = knob(1.0, "clip the gradient norm to this (<= 0: no clipping)")
    bf16: Literal["auto", "on", "off"] = knob(
        "auto", "bf16 autocast: auto = when the device has fast bf16 (CUDA, or a CPU with AMX or "
                "AVX512-BF16), on = always, off = never")
    gradient_checkpointing: bool = knob(
        False, "recompute activations in backward: much less memory, ~30% slower")
    head_lr_multiplier: float = knob(
        1.0, "learning-rate factor of a freshly initialised head (parameters named 'classifier.*')",
        gt=0)
    seed: int = knob(42, "seed of the data order and of the python / numpy / torch RNGs")
    checkpoint_every: int = knob(25, "save the full training state every N steps (the latest is "
                                     "kept; a killed run resumes from it)", ge=1)
    log_every: int = knob(5, "log metrics every N steps", ge=1)

    def train_config(self, **changes: Any) -> TrainConfig:
        """Just the loop's fields (a subclass's extra fields dropped), with ``changes`` applied."""
        names = [f.name for f in dataclasses.fields(TrainConfig)]
        return TrainConfig(**{**{n: getattr(self, n) for n in names}, **changes})
