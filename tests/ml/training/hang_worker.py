"""torchrun worker that hangs on purpose: rank 1 never reaches the barrier that rank 0 waits at.

    python -m torch.distributed.run --nproc_per_node=2 -m tests.ml.training.hang_worker OUT

Each rank first writes OUT/pid<rank> so the test can check that no worker outlives the launch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from jrr_pipeline.ml.training.distributed import (
    barrier,
    cleanup_distributed,
    init_distributed,
    world_info,
)


def main() -> None:
    out = Path(sys.argv[1])
    init_distributed(torch.device("cpu"))
    rank, _ = world_info()
    (out / f"pid{rank}").write_text(str(os.getpid()))
    if rank == 1:
        time.sleep(3600)  # never reaches the barrier
    barrier()
    cleanup_distributed()


if __name__ == "__main__":
    main()
