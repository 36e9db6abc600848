"""Typed settings of every stage (``stages``) and the machinery behind them (``base``).

Names load lazily: ``ml.training.config`` builds on ``base`` while ``stages`` builds on it.
"""

from importlib import import_module

_BASE = {"Settings", "knob"}
_STAGES = {"STAGES", "DatasetSettings", "BM25IndexSettings", "BM25NegativesSettings", "DenoisedCandidatesSettings",
           "DenseNegativesSettings", "EvaluationSettings", "GenerationSettings", "FaissIndexSettings", "JointSettings",
           "QrelsSettings", "WarmupRerankerSettings", "WarmupRetrieverSettings", "WarmupSettings"}


def __getattr__(name: str):
    if name in _BASE | _STAGES:
        module = "base" if name in _BASE else "stages"
        return getattr(import_module(f"jrr_pipeline.ml.settings.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_BASE | _STAGES)
