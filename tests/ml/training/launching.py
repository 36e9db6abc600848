"""torchrun launches for the DDP tests: one environment, and one more try when a launch hangs.

A gloo launch hung once on a loaded 2-core CI machine (stop 24's CI: the first launch of
test_two_gloo_ranks passed 600 s; the same test passes in ~8 s, alone or in the suite). A hang is
now bounded (``JRR_DIST_TIMEOUT_S`` makes a stuck collective fail, ``TorchrunTimeout`` stops a stuck
launch) and tried once more; the first try's output, with every rank's stack, goes into a warning
so a hang that comes back can be read from the CI log. Every assertion still runs on the retry.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from jrr_pipeline.ml.training.distributed import TorchrunTimeout, launch_torchrun

REPO = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "JRR_DIST_TIMEOUT_S": "120"}
T = TypeVar("T")


def hung(error: BaseException) -> bool:
    """A launch that ran past its timeout, or a rank whose collective timed out."""
    return isinstance(error, TorchrunTimeout) or (
        isinstance(error, RuntimeError) and "Timed out waiting" in str(error))


def retry_a_hang(attempt: Callable[[], T], fresh: Path | None = None) -> T:
    """``attempt()``, once more if it hung (``fresh`` is emptied first, so the retry starts clean)."""
    try:
        return attempt()
    except RuntimeError as error:
        if not hung(error):
            raise
        warnings.warn(f"torchrun launch hung, trying once more:\n{error}", stacklevel=2)
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
    return attempt()


def launch(nproc: int, module: str, args: list[str], timeout: float = 300, **kwargs):
    """``launch_torchrun`` from the repository root with the test environment."""
    return launch_torchrun(nproc, module, args, env=ENV, cwd=REPO, timeout=timeout, **kwargs)
