from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jrr_pipeline.ml.modeling import (
    DenseRetriever,
    RetrieverConfig,
    default_base_model,
    resolve_model_path,
)
from jrr_pipeline.ml.modeling import retriever as retriever_module
from jrr_pipeline.ml.modeling.base import is_checkpointing

TEXTS = [
    "a short one",
    "Protein folding is driven by hydrophobic collapse and hydrogen bonds in the core.",
    "cells",
    "Vitamin D supplementation and the risk of fractures in older adults: a trial.",
    "the quick brown fox jumps over the lazy dog",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_resolve_model_path_aliases() -> None:
    packaged = default_base_model()
    assert Path(packaged, "config.json").is_file()
    for alias in (None, "default", "minilm", "MiniLM"):
        assert resolve_model_path(alias) == packaged
    assert resolve_model_path("org/some-model") == "org/some-model"


def test_shapes_normalisation_and_truncation(tiny_model_dir: Path) -> None:
    cfg = RetrieverConfig(base_model="tiny", query_max_length=8, passage_max_length=12)
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg)
    qb = model.tokenize_queries(TEXTS)
    pb = model.tokenize_passages(TEXTS)
    assert qb["input_ids"].shape == (5, 8)  # the long texts hit the limit
    assert pb["input_ids"].shape == (5, 12)
    q, p = model(qb, pb)
    assert q.shape == (5, 32) and p.shape == (5, 32)
    assert q.requires_grad
    assert torch.allclose(q.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(model.score(q, p), q @ p.T / 0.05)

    raw = DenseRetriever.from_pretrained(str(tiny_model_dir), RetrieverConfig(normalize=False))
    norms = raw.encode_passages(raw.tokenize_passages(TEXTS)).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(5), atol=1e-3)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_hand_computation(tiny_model_dir: Path, pooling: str) -> None:
    cfg = RetrieverConfig(pooling=pooling, normalize=False)  # type: ignore[arg-type]
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg).eval()
    batch = model.tokenize_passages(TEXTS[:3])
    with torch.no_grad():
        hidden = model.encoder(**batch).last_hidden_state
        ours = model.encode_passages(batch)
    mask = batch["attention_mask"]
    for i in range(3):
        n = int(mask[i].sum())
        expected = hidden[i, :n].mean(dim=0) if pooling == "mean" else hidden[i, 0]
        assert torch.allclose(ours[i], expected, atol=1e-5)
    # padding must not leak into the pooled vector: the text alone gives the same embedding
    with torch.no_grad():
        alone = model.encode_passages(model.tokenize_passages([TEXTS[0]]))
    assert torch.allclose(alone[0], ours[0], atol=1e-5)


def test_embed_restores_input_order_and_mode(tiny_model_dir: Path) -> None:
    model = DenseRetriever.from_pretrained(str(tiny_model_dir))
    model.train()
    sorted_ = model.embed(TEXTS, "passage", batch_size=2)
    unsorted = model.embed(TEXTS, "passage", batch_size=2, sort_by_length=False)
    one_by_one = np.stack([model.embed([t], "passage")[0] for t in TEXTS])
    assert model.training  # embed switched to eval and back
    assert sorted_.dtype == np.float32 and sorted_.shape == (5, 32)
    np.testing.assert_allclose(sorted_, unsorted, atol=1e-5)
    np.testing.assert_allclose(sorted_, one_by_one, atol=1e-5)
    assert model.embed([], "query").shape == (0, 32)
    with pytest.raises(ValueError, match="kind"):
        model.embed(TEXTS, "document")  # type: ignore[arg-type]


def test_save_load_roundtrip_restores_config_and_outputs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = RetrieverConfig(
        base_model="tiny",
        pooling="cls",
        temperature=0.02,
        query_max_length=16,
        passage_max_length=40,
    )
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg)
    out = tmp_path / "ret"
    model.save_pretrained(out)
    loaded = DenseRetriever.from_pretrained(str(out))
    assert loaded.config == cfg
    for kind in ("query", "passage"):
        np.testing.assert_array_equal(model.embed(TEXTS, kind), loaded.embed(TEXTS, kind))
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 40
    assert not list(tmp_path.glob(".ret.*"))  # no temp folders left behind


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False)])
def test_sentence_transformers_loads_the_folder(
    tiny_model_dir: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    cfg = RetrieverConfig(pooling=pooling, normalize=normalize)  # type: ignore[arg-type]
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg)
    model.save_pretrained(tmp_path / "st")
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    ours = model.embed(TEXTS, "passage")
    assert _cosines(ours, theirs).min() > 0.9999
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_separate_towers_diverge_after_a_query_only_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cfg = RetrieverConfig(shared_encoder=False)
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg)
    assert model.query_encoder is not None and model.query_encoder is not model.encoder
    np.testing.assert_allclose(
        model.embed(TEXTS, "query"), model.embed(TEXTS, "passage"), atol=1e-6
    )
    p_before = model.embed(TEXTS, "passage")

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    q = model.encode_queries(model.tokenize_queries(TEXTS))
    (q[:, 0].sum()).backward()  # a loss on queries only
    optimizer.step()

    assert all(p.grad is None for p in model.encoder.parameters())
    q_after = model.embed(TEXTS, "query")
    np.testing.assert_array_equal(model.embed(TEXTS, "passage"), p_before)
    assert np.abs(q_after - p_before).max() > 1e-3

    model.save_pretrained(tmp_path / "two")
    assert (tmp_path / "two" / "query_encoder" / "model.safetensors").is_file()
    loaded = DenseRetriever.from_pretrained(str(tmp_path / "two"))
    assert loaded.config.shared_encoder is False
    np.testing.assert_array_equal(loaded.embed(TEXTS, "query"), q_after)
    np.testing.assert_array_equal(loaded.embed(TEXTS, "passage"), p_before)
    with pytest.raises(ValueError, match="jrr_retriever.json"):
        DenseRetriever.from_pretrained(str(tmp_path / "two"), RetrieverConfig(shared_encoder=True))

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "two"), device="cpu")
    assert _cosines(st.encode(TEXTS), p_before).min() > 0.9999  # the passage tower


def test_bad_saved_config_names_the_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    DenseRetriever.from_pretrained(str(tiny_model_dir)).save_pretrained(tmp_path / "r")
    cfg_file = tmp_path / "r" / "jrr_retriever.json"
    data = json.loads(cfg_file.read_text())
    data["config"]["poolin"] = "mean"
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"jrr_retriever.json: field 'poolin'"):
        DenseRetriever.from_pretrained(str(tmp_path / "r"))
    cfg_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"jrr_retriever.json:1: invalid JSON"):
        DenseRetriever.from_pretrained(str(tmp_path / "r"))
    with pytest.raises(ValueError, match="temperature"):
        RetrieverConfig(temperature=0.0)


def test_failed_save_keeps_the_previous_folder(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DenseRetriever.from_pretrained(str(tiny_model_dir))
    out = tmp_path / "ret"
    model.save_pretrained(out)
    before = model.embed(TEXTS, "passage")

    with torch.no_grad():  # change the weights, then crash half-way through the save
        for param in model.parameters():
            param.add_(0.1)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(retriever_module, "_write_sentence_transformers_files", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    np.testing.assert_array_equal(
        DenseRetriever.from_pretrained(str(out)).embed(TEXTS, "passage"), before
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ret"]


def test_gradient_checkpointing_still_trains(tiny_model_dir: Path) -> None:
    cfg = RetrieverConfig(gradient_checkpointing=True)
    model = DenseRetriever.from_pretrained(str(tiny_model_dir), cfg).train()
    assert is_checkpointing(model.encoder)
    q = model.encode_queries(model.tokenize_queries(TEXTS[:2]))
    q.sum().backward()
    grads = [p.grad for p in model.encoder.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
