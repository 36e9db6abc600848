"""One torch thread (the machine is shared; a resumed game must match an uninterrupted one),
the toy corpus with its BM25 index, and a tiny random T5 for the seq2seq generator."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def corpus(beir_dir: Path) -> tuple[list[str], list[str]]:
    """(doc ids, "title text") of the toy BEIR corpus."""
    rows = [json.loads(line) for line in (beir_dir / "corpus.jsonl").read_text().splitlines()]
    return [r["_id"] for r in rows], [f"{r['title']} {r['text']}" for r in rows]


@pytest.fixture(scope="session")
def bm25(corpus):
    from jrr_pipeline.ml.sparse import BM25Index

    return BM25Index.build(*corpus)


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A tiny random T5 (d_model 32, 2 + 2 layers) saved in HF format with the MiniLM tokenizer
    ([SEP] ends a query, [PAD] starts the decoder)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=2, d_kv=16,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
