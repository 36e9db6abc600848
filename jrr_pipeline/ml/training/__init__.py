"""Training: the generic resumable (DDP-capable) loop, the warm-up tasks, RocketQAv2 and AR2.

Names load lazily, so importing ``TrainConfig`` (or the settings built on it) costs no torch.
"""

from importlib import import_module

_EXPORTS = {
    "TrainState": "checkpoint", "latest_state_path": "checkpoint",
    "load_training_state": "checkpoint",
    "save_training_state": "checkpoint", "TrainConfig": "config",
    "is_main_process": "distributed", "launch_torchrun": "distributed", "world_info": "distributed",
    "TrainingTask": "loop", "TrainResult": "loop", "train": "loop", "lr_multiplier": "schedule",
    "RerankerWarmupTask": "warmup", "RetrievalExample": "warmup", "RetrieverWarmupTask": "warmup",
    "build_retrieval_examples": "warmup",
}


def __getattr__(name: str):
    if name == "replace_dir_atomic":
        return import_module("jrr_pipeline.ml.io").replace_dir_atomic
    if name in _EXPORTS:
        return getattr(import_module(f"jrr_pipeline.ml.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted([*_EXPORTS, "replace_dir_atomic"])
