"""Retriever (dual encoder) and reranker (cross encoder), saved in HF / sentence-transformers format."""

from jrr_pipeline.ml.modeling.base import default_base_model, resolve_model_path
from jrr_pipeline.ml.modeling.reranker import CrossEncoderReranker, RerankerConfig
from jrr_pipeline.ml.modeling.retriever import DenseRetriever, RetrieverConfig

__all__ = [
    "CrossEncoderReranker",
    "DenseRetriever",
    "RerankerConfig",
    "RetrieverConfig",
    "default_base_model",
    "resolve_model_path",
]
