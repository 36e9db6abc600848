"""Training: the generic resumable (DDP-capable) loop and the retriever / reranker warm-up tasks."""

from jrr_pipeline.ml.io import replace_dir_atomic
from jrr_pipeline.ml.training.checkpoint import (
    TrainState,
    latest_state_path,
    load_training_state,
    save_training_state,
)
from jrr_pipeline.ml.training.config import TrainConfig
from jrr_pipeline.ml.training.distributed import is_main_process, launch_torchrun, world_info
from jrr_pipeline.ml.training.loop import TrainingTask, TrainResult, train
from jrr_pipeline.ml.training.schedule import lr_multiplier

_WARMUP_NAMES = {
    "RerankerWarmupTask", "RetrievalExample", "RetrieverWarmupTask", "build_retrieval_examples",
}


def __getattr__(name: str):
    # The warm-up tasks import transformers (seconds); load them only when asked for, so that
    # the generic loop and torchrun workers start fast.
    if name in _WARMUP_NAMES:
        from jrr_pipeline.ml.training import warmup

        return getattr(warmup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RerankerWarmupTask",
    "RetrievalExample",
    "RetrieverWarmupTask",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingTask",
    "build_retrieval_examples",
    "is_main_process",
    "latest_state_path",
    "launch_torchrun",
    "load_training_state",
    "lr_multiplier",
    "replace_dir_atomic",
    "save_training_state",
    "train",
    "world_info",
]
