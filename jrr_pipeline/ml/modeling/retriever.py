"""Dense retriever (dual encoder): s(q, p) = <E_q(q), E_p(p)> / temperature.

A shared BERT-style tower by default; ``shared_encoder=False`` gives separate query and passage
towers, both initialised from the base model. A saved folder loads with
``sentence_transformers.SentenceTransformer(path)``; with separate towers the root holds the
*passage* tower (what SentenceTransformer loads) and ``query_encoder/`` the query tower.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel

from jrr_pipeline.ml.io import atomic_directory
from jrr_pipeline.ml.modeling.base import (
    enable_checkpointing,
    length_sorted_order,
    module_device,
    read_saved_config,
    resolve_model_path,
    write_json,
)
from jrr_pipeline.ml.modeling.pooling import normalize, pool
from jrr_pipeline.ml.precision import autocast_context

CONFIG_FILE = "jrr_retriever.json"
QUERY_TOWER_DIR = "query_encoder"
FORMAT_VERSION = 1


@dataclass
class RetrieverConfig:
    """How the retriever encodes and scores; saved as ``jrr_retriever.json``."""

    base_model: str = "default"
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    temperature: float = 0.05  # s = <q, p> / temperature
    shared_encoder: bool = True
    query_max_length: int = 64
    passage_max_length: int = 256
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"RetrieverConfig.pooling: {self.pooling!r} is not 'mean' or 'cls'")
        if self.temperature <= 0:
            raise ValueError(f"RetrieverConfig.temperature: must be > 0, got {self.temperature}")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"RetrieverConfig.{name}: must be >= 2, got {getattr(self, name)}")


def load_encoder(path: str, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """Load a bare HF encoder (no task head), with SDPA attention where the model supports it."""
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = AutoModel.from_pretrained(path)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model


class DenseRetriever(torch.nn.Module):
    """Dual encoder with mean/CLS pooling, optional L2 normalisation and a temperature."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: Any,
        config: RetrieverConfig,
        query_encoder: PreTrainedModel | None = None,
    ) -> None:
        super().__init__()
        if config.shared_encoder != (query_encoder is None):
            raise ValueError("DenseRetriever: query_encoder must be given iff shared_encoder=False")
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = encoder  # shared tower, or the passage tower
        self.query_encoder = query_encoder

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, path_or_name: str, config: RetrieverConfig | None = None
    ) -> DenseRetriever:
        """Load a fresh retriever from a base HF model, or a folder written by ``save_pretrained``.

        For a saved folder the stored config is restored unless ``config`` is given. A saved
        shared-tower retriever may be loaded with ``shared_encoder=False`` (both towers start from
        it); the reverse is refused because it would silently drop a tower.
        """
        path = resolve_model_path(path_or_name)
        saved_file = Path(path) / CONFIG_FILE
        if saved_file.is_file():
            saved = _read_config(saved_file)
            cfg = config if config is not None else saved
            if saved.shared_encoder is False and cfg.shared_encoder:
                raise ValueError(
                    f"{saved_file}: field 'shared_encoder': the folder holds separate towers; "
                    "load it with shared_encoder=False"
                )
            separate_saved = not saved.shared_encoder
            query_path = str(Path(path) / QUERY_TOWER_DIR) if separate_saved else path
        else:
            cfg = config if config is not None else RetrieverConfig(base_model=str(path_or_name))
            query_path = path
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = load_encoder(path, cfg.gradient_checkpointing)
        query_encoder = None
        if not cfg.shared_encoder:
            query_encoder = load_encoder(query_path, cfg.gradient_checkpointing)
        return cls(encoder, tokenizer, cfg, query_encoder)

    # ---------------------------------------------------------------------------- encoding
    @property
    def query_tower(self) -> PreTrainedModel:
        """The module that encodes queries (the shared encoder unless towers are separate)."""
        return self.encoder if self.query_encoder is None else self.query_encoder

    @property
    def device(self) -> torch.device:
        """Device of the passage/shared tower."""
        return module_device(self.encoder)

    @property
    def embedding_dim(self) -> int:
        """Size of the output vectors (the encoder's hidden size)."""
        return int(self.encoder.config.hidden_size)

    def tokenize_queries(self, texts: list[str]) -> BatchEncoding:
        """Padded, truncated (``query_max_length``) tensors for ``texts``."""
        return self._tokenize(texts, self.config.query_max_length)

    def tokenize_passages(self, titles_texts: list[str]) -> BatchEncoding:
        """Padded, truncated (``passage_max_length``) tensors for "title text" passages."""
        return self._tokenize(titles_texts, self.config.passage_max_length)

    def _tokenize(self, texts: list[str], max_length: int) -> BatchEncoding:
        if isinstance(texts, str):
            raise TypeError("expected a list of strings, got a single string")
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )

    def _encode(self, tower: PreTrainedModel, batch: Mapping[str, Tensor]) -> Tensor:
        device = module_device(tower)
        inputs = {k: v.to(device) for k, v in batch.items()}
        hidden = tower(**inputs).last_hidden_state
        # Pool in fp32 so that bf16 autocast only affects the transformer's matmuls.
        pooled = pool(hidden.float(), inputs["attention_mask"], self.config.pooling)
        return normalize(pooled) if self.config.normalize else pooled

    def encode_queries(self, batch: Mapping[str, Tensor]) -> Tensor:
        """[B, H] query embeddings (with grad)."""
        return self._encode(self.query_tower, batch)

    def encode_passages(self, batch: Mapping[str, Tensor]) -> Tensor:
        """[B, H] passage embeddings (with grad)."""
        return self._encode(self.encoder, batch)

    def forward(
        self,
        queries: Mapping[str, Tensor] | None = None,
        passages: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Encode queries and/or passages in one call (what a DDP wrapper must go through)."""
        q = self.encode_queries(queries) if queries is not None else None
        p = self.encode_passages(passages) if passages is not None else None
        return q, p

    def score(self, q: Tensor, p: Tensor) -> Tensor:
        """[Bq, Bp] similarity matrix q @ p.T / temperature."""
        return q @ p.T / self.config.temperature

    @torch.inference_mode()
    def embed(
        self,
        texts: list[str],
        kind: Literal["query", "passage"],
        batch_size: int = 64,
        progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
        sort_by_length: bool = True,
    ) -> np.ndarray:
        """float32 [N, H] embeddings of ``texts`` in input order (batches sorted by length)."""
        if kind not in ("query", "passage"):
            raise ValueError(f"embed: kind must be 'query' or 'passage', got {kind!r}")
        if batch_size < 1:
            raise ValueError(f"embed: batch_size must be >= 1, got {batch_size}")
        tokenize = self.tokenize_queries if kind == "query" else self.tokenize_passages
        encode = self.encode_queries if kind == "query" else self.encode_passages
        order = length_sorted_order(texts) if sort_by_length else list(range(len(texts)))
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        try:
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=f"embed {kind}s", disable=not progress, unit="batch"):
                idx = order[start : start + batch_size]
                batch = tokenize([texts[i] for i in idx])
                with autocast_context(self.device, autocast_dtype):
                    emb = encode(batch)
                out[idx] = emb.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> None:
        """Atomically write a folder that loads here and with ``SentenceTransformer(directory)``."""
        with atomic_directory(directory) as tmp:
            self.encoder.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.query_encoder is not None:
                self.query_encoder.save_pretrained(tmp / QUERY_TOWER_DIR)
            _write_sentence_transformers_files(tmp, self.config, self.embedding_dim)
            write_json(
                tmp / CONFIG_FILE,
                {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(self.config)},
            )


def _read_config(path: Path) -> RetrieverConfig:
    return read_saved_config(path, RetrieverConfig, FORMAT_VERSION)


def _write_sentence_transformers_files(root: Path, config: RetrieverConfig, dim: int) -> None:
    """The classic sentence-transformers layout: Transformer -> Pooling (-> Normalize).

    SentenceTransformer has one ``max_seq_length``; we store the passage limit, so queries
    longer than ``query_max_length`` tokens are truncated differently there than here.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if config.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (root / "2_Normalize").mkdir()
    write_json(root / "modules.json", modules)
    write_json(
        root / "sentence_bert_config.json",
        {"max_seq_length": config.passage_max_length, "do_lower_case": False},
    )
    write_json(
        root / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": config.pooling == "cls",
            "pooling_mode_mean_tokens": config.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    write_json(
        root / "config_sentence_transformers.json",
        {
            "__version__": _versions(),
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if config.normalize else "dot",
        },
    )


def _versions() -> dict[str, str]:
    import transformers

    versions = {"pytorch": torch.__version__, "transformers": transformers.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return versions
