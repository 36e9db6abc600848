"""Swappable Dagster resources (each with embedded defaults under JRR_HOME), home paths and locks.

The resource classes load lazily, so ``resources.home`` and ``resources.locks`` can be imported
(and the environment configured) before Dagster is.
"""

from importlib import import_module

_EXPORTS = {
    "ArtifactStore": "artifacts", "swap_dir": "artifacts", "Compute": "compute",
    "DatasetSource": "dataset", "MLflowTracking": "tracking", "SCHEMAS": "warehouse",
    "Warehouse": "warehouse",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"jrr_pipeline.resources.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
