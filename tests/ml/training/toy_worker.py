"""Subprocess entry for the SIGKILL resume test: trains the toy task slowly, checkpointing often.

    python -m tests.ml.training.toy_worker OUT_DIR STATE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from jrr_pipeline.ml.training import TrainConfig, train

from .toy import ToyTask, make_examples, make_model

KILL_CONFIG = TrainConfig(
    max_steps=24, batch_size=4, lr=1e-2, warmup_ratio=0.25, checkpoint_every=4, log_every=4, seed=3
)


def main() -> None:
    torch.set_num_threads(1)
    out, state = Path(sys.argv[1]), Path(sys.argv[2])
    sleep = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    train(ToyTask(make_model(), sleep_s=sleep), make_examples(30), KILL_CONFIG, out,
          state_dir=state, progress=False)


if __name__ == "__main__":
    main()
