"""Cross-encoder reranker: s_ce(q, p) = w . h([CLS] q [SEP] p [SEP]), one logit per pair.

Built on ``AutoModelForSequenceClassification`` with ``num_labels=1``; loading a bare encoder
(e.g. the packaged MiniLM) gives a freshly initialised head. Saved folders are plain HF
folders that ``sentence_transformers.CrossEncoder(path)`` loads; its ``predict`` applies a
sigmoid for one label (we also record it explicitly in ``config.json``), which equals our
``predict(..., activation="sigmoid")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BatchEncoding,
)

from jrr_pipeline.ml.io import atomic_directory
from jrr_pipeline.ml.modeling.base import (
    enable_checkpointing,
    module_device,
    read_saved_config,
    resolve_model_path,
    write_json,
)
from jrr_pipeline.ml.precision import autocast_context

CONFIG_FILE = "jrr_reranker.json"
FORMAT_VERSION = 1
SIGMOID_PATH = "torch.nn.modules.activation.Sigmoid"


@dataclass
class RerankerConfig:
    """Reranker settings; saved as ``jrr_reranker.json``."""

    base_model: str = "default"
    max_length: int = 320
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.max_length < 3:
            raise ValueError(f"RerankerConfig.max_length: must be >= 3, got {self.max_length}")


class CrossEncoderReranker(torch.nn.Module):
    """Scores (query, passage) pairs jointly with one transformer pass per pair."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: RerankerConfig) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def from_pretrained(
        cls, path_or_name: str, config: RerankerConfig | None = None
    ) -> CrossEncoderReranker:
        """Load a base encoder (fresh head), a one-label cross-encoder, or a saved reranker."""
        path = resolve_model_path(path_or_name)
        saved_file = Path(path) / CONFIG_FILE
        if config is None:
            config = (
                _read_config(saved_file)
                if saved_file.is_file()
                else RerankerConfig(base_model=str(path_or_name))
            )
        hf_config = AutoConfig.from_pretrained(path)
        archs = getattr(hf_config, "architectures", None) or []
        has_head = any(a.endswith("ForSequenceClassification") for a in archs)
        if has_head and hf_config.num_labels != 1:
            raise ValueError(
                f"{path}: field 'num_labels': the checkpoint has {hf_config.num_labels} labels; "
                "a reranker needs exactly 1"
            )
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, attn_implementation="sdpa"
            )
        except (ValueError, ImportError):
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, config)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return module_device(self.model)

    def tokenize(self, queries: list[str], passages: list[str]) -> BatchEncoding:
        """Pair encodings "[CLS] q [SEP] p [SEP]", padded, truncated to ``max_length``.

        Truncation is "longest_first" like sentence-transformers' CrossEncoder, so both give
        identical inputs; with short queries it only ever cuts the passage.
        """
        if isinstance(queries, str) or isinstance(passages, str):
            raise TypeError("tokenize: expected lists of strings, got a single string")
        if len(queries) != len(passages):
            raise ValueError(
                f"tokenize: {len(queries)} queries but {len(passages)} passages (must be equal)"
            )
        return self.tokenizer(
            list(queries),
            list(passages),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """[B] logits, one per pair."""
        device = self.device
        inputs = {k: v.to(device) for k, v in batch.items()}
        return self.model(**inputs).logits.squeeze(-1).float()

    @torch.inference_mode()
    def predict(
        self,
        pairs: list[tuple[str, str]],
        batch_size: int = 32,
        progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
        activation: Literal["none", "sigmoid"] = "none",
    ) -> np.ndarray:
        """float32 [N] scores of ``(query, passage)`` pairs in input order (raw logits by default)."""
        if activation not in ("none", "sigmoid"):
            raise ValueError(f"predict: activation must be 'none' or 'sigmoid', got {activation!r}")
        if batch_size < 1:
            raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out = np.empty(len(pairs), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="rerank", disable=not progress, unit="batch"):
                idx = order[start : start + batch_size]
                batch = self.tokenize([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
                with autocast_context(self.device, autocast_dtype):
                    logits = self.forward(batch)
                if activation == "sigmoid":
                    logits = torch.sigmoid(logits)
                out[idx] = logits.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        """Atomically write an HF folder that loads here and with ``CrossEncoder(directory)``."""
        hf_config = self.model.config
        previous_st = getattr(hf_config, "sentence_transformers", None)
        previous_max = self.tokenizer.model_max_length
        hf_config.sentence_transformers = {"activation_fn": SIGMOID_PATH}
        # CrossEncoder truncates at the tokenizer's model_max_length.
        self.tokenizer.model_max_length = self.config.max_length
        try:
            with atomic_directory(directory) as tmp:
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                write_json(
                    tmp / CONFIG_FILE,
                    {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(self.config)},
                )
        finally:
            self.tokenizer.model_max_length = previous_max
            if previous_st is None:
                del hf_config.sentence_transformers
            else:
                hf_config.sentence_transformers = previous_st


def _read_config(path: Path) -> RerankerConfig:
    return read_saved_config(path, RerankerConfig, FORMAT_VERSION)
