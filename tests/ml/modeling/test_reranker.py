from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jrr_pipeline.ml.modeling import CrossEncoderReranker, RerankerConfig
from jrr_pipeline.ml.modeling.base import is_checkpointing

PAIRS = [
    (
        "what causes fractures",
        "Vitamin D supplementation and the risk of fractures in older adults.",
    ),
    ("protein folding", "Hydrophobic collapse drives folding."),
    ("q", "a very long passage " * 40),
    ("dogs", "the quick brown fox jumps over the lazy dog"),
]


def _fresh(tiny_model_dir: Path, **kwargs: object) -> CrossEncoderReranker:
    torch.manual_seed(0)
    model = CrossEncoderReranker.from_pretrained(str(tiny_model_dir), RerankerConfig(**kwargs))
    with torch.no_grad():  # a fresh head scores ~0; make differences between pairs visible
        model.model.classifier.weight.normal_(0, 1.0)
    return model


def test_forward_shape_and_predict_order(tiny_model_dir: Path) -> None:
    model = _fresh(tiny_model_dir, max_length=24)
    batch = model.tokenize([q for q, _ in PAIRS], [p for _, p in PAIRS])
    assert batch["input_ids"].shape == (4, 24)  # the long passage is cut to max_length
    assert batch["token_type_ids"][0].max() == 1  # second segment is the passage
    model.train()
    logits = model(batch)
    assert logits.shape == (4,) and logits.requires_grad
    scores = model.predict(PAIRS, batch_size=3)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # order restored after sorting
    np.testing.assert_allclose(
        model.predict(PAIRS, activation="sigmoid"), 1 / (1 + np.exp(-expected)), atol=1e-6
    )
    assert len(set(np.round(scores, 4))) == 4
    with pytest.raises(ValueError, match="2 queries but 1 passages"):
        model.tokenize(["a", "b"], ["c"])


def test_fresh_head_on_a_base_encoder(tiny_model_dir: Path) -> None:
    model = CrossEncoderReranker.from_pretrained(str(tiny_model_dir))
    assert model.model.config.num_labels == 1
    assert model.model.classifier.weight.shape == (1, 32)
    assert model.config.max_length == 320


def test_save_load_roundtrip(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _fresh(tiny_model_dir, base_model="tiny", max_length=48)
    model.save_pretrained(tmp_path / "rr")
    loaded = CrossEncoderReranker.from_pretrained(str(tmp_path / "rr"))
    assert loaded.config == RerankerConfig(base_model="tiny", max_length=48)
    np.testing.assert_array_equal(loaded.predict(PAIRS), model.predict(PAIRS))
    assert (tmp_path / "rr" / "model.safetensors").is_file()
    # saving does not change the live tokenizer
    assert model.tokenizer.model_max_length != 48


def test_cross_encoder_loads_the_folder_with_same_scores(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import CrossEncoder

    model = _fresh(tiny_model_dir, max_length=40)
    model.save_pretrained(tmp_path / "ce")
    ce = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    # CrossEncoder applies a sigmoid for one label by default; the folder also records it
    assert isinstance(ce.activation_fn, torch.nn.Sigmoid)
    np.testing.assert_allclose(
        ce.predict(PAIRS), model.predict(PAIRS, activation="sigmoid"), atol=1e-5
    )
    np.testing.assert_allclose(
        ce.predict(PAIRS, activation_fn=torch.nn.Identity()), model.predict(PAIRS), atol=1e-5
    )


def test_multi_label_checkpoint_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    two = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=2)
    two.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="num_labels"):
        CrossEncoderReranker.from_pretrained(str(tmp_path / "two"))


def test_failed_save_keeps_previous_and_bad_config_is_named(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fresh(tiny_model_dir)
    out = tmp_path / "rr"
    model.save_pretrained(out)
    before = model.predict(PAIRS)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(model.tokenizer, "save_pretrained", boom)
    with torch.no_grad():
        model.model.classifier.bias.add_(5.0)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(out)
    np.testing.assert_array_equal(
        CrossEncoderReranker.from_pretrained(str(out)).predict(PAIRS), before
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rr"]

    cfg_file = out / "jrr_reranker.json"
    cfg_file.write_text(json.dumps({"format_version": 1, "config": {"max_length": 1}}))
    with pytest.raises(ValueError, match="jrr_reranker.json: field 'config'.*max_length"):
        CrossEncoderReranker.from_pretrained(str(out))


def test_gradient_checkpointing_still_trains(tiny_model_dir: Path) -> None:
    model = CrossEncoderReranker.from_pretrained(
        str(tiny_model_dir), RerankerConfig(gradient_checkpointing=True)
    ).train()
    assert is_checkpointing(model.model)
    model(model.tokenize(["a", "b"], ["c", "d"])).sum().backward()
    assert model.model.bert.embeddings.word_embeddings.weight.grad is not None
