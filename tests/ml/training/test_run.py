"""The `python -m jrr_pipeline.ml.training.run` CLI, in-process (torchrun is covered elsewhere)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.training.checkpoint import load_training_state
from jrr_pipeline.ml.training.run import load_run_config, main

WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter"]


def _write_tables(root) -> None:
    n = len(WORDS)
    pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "title": WORDS,
                  "text": [f"about {w}" for w in WORDS]}).write_parquet(root / "corpus.parquet")
    pl.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                  "text": WORDS}).write_parquet(root / "queries.parquet")
    pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)],
                  "relevance": [1] * n, "split": ["train"] * (n - 2) + ["test"] * 2}
                 ).write_parquet(root / "qrels.parquet")
    pl.DataFrame({"query_id": [f"q{i}" for i in range(n) for _ in range(3)],
                  "doc_id": [f"d{(i + k) % n}" for i in range(n) for k in (1, 2, 3)],
                  "rank": [1, 2, 3] * n, "score": [3.0, 2.0, 1.0] * n,
                  "source": ["bm25"] * (3 * n)}).write_parquet(root / "negatives.parquet")


def _config(root, model_dir, task: str, **extra) -> dict:
    return {
        "task": task,
        "model": {"path": str(model_dir), **({"max_length": 32} if task == "reranker" else
                                             {"query_max_length": 8, "passage_max_length": 16})},
        "data": {t: f"{t}.parquet" for t in ("queries", "corpus", "qrels", "negatives")},
        "examples": {"n_negatives": 2, "rank_window": [1, 3]},
        "train": {"max_steps": 4, "batch_size": 3, "lr": 1e-3, "log_every": 2,
                  "checkpoint_every": 2, "seed": 1},
        "output_dir": "out/model", "state_dir": "out/state",
        "metrics_file": "out/metrics.jsonl", "result_file": "out/result.json",
        "progress": False, **extra,
    }


@pytest.mark.parametrize("task", ["retriever", "reranker"])
def test_cli_trains_and_writes_outputs(tiny_model_dir, tmp_path, task) -> None:
    _write_tables(tmp_path)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(_config(tmp_path, tiny_model_dir, task)))
    assert main(["--task", task, "--config", str(cfg_path)]) == 0
    out = tmp_path / "out"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert {"loss", "lr", "examples_per_s"} <= set(lines[0]["metrics"])
    result = json.loads((out / "result.json").read_text())
    assert result["completed"] and result["step"] == 4 and result["n_examples"] == 6
    assert [p.name for p in (out / "state").iterdir()] == ["step-00000004"]
    # the saved model holds the weights training ended with (the last checkpoint's)
    loader = DenseRetriever if task == "retriever" else CrossEncoderReranker
    saved = loader.from_pretrained(str(out / "model")).state_dict()
    (final,) = load_training_state(out / "state").modules.values()
    assert final.keys() == saved.keys()
    for key, value in final.items():
        assert torch.equal(value, saved[key]), key


def test_cli_config_errors_name_the_field(tiny_model_dir, tmp_path, capsys) -> None:
    _write_tables(tmp_path)
    cfg_path = tmp_path / "cfg.json"
    bad = _config(tmp_path, tiny_model_dir, "retriever")
    bad["train"]["batch_sise"] = 4
    cfg_path.write_text(json.dumps(bad))
    assert main(["--task", "retriever", "--config", str(cfg_path)]) == 2
    assert "field 'batch_sise'" in capsys.readouterr().err
    del bad["train"]["batch_sise"]
    bad["data"]["qrels"] = "missing.parquet"
    cfg_path.write_text(json.dumps(bad))
    assert main(["--task", "retriever", "--config", str(cfg_path)]) == 2
    assert "field 'data.qrels'" in capsys.readouterr().err
    cfg_path.write_text('{"task": "retriever",\n "data": }')
    with pytest.raises(ValueError, match=r"cfg.json:2: invalid JSON"):
        load_run_config(cfg_path)
    cfg_path.write_text(json.dumps(_config(tmp_path, tiny_model_dir, "reranker")))
    assert main(["--task", "retriever", "--config", str(cfg_path)]) == 2
    assert "field 'task'" in capsys.readouterr().err


def test_serving_overrides_reach_the_checkpoint_only(tiny_model_dir, tmp_path, capsys) -> None:
    _write_tables(tmp_path)
    cfg_path = tmp_path / "cfg.json"
    cfg = _config(tmp_path, tiny_model_dir, "retriever", serving={"passage_max_length": 40})
    cfg_path.write_text(json.dumps(cfg))
    assert main(["--task", "retriever", "--config", str(cfg_path)]) == 0
    saved = DenseRetriever.from_pretrained(str(tmp_path / "out" / "model"))
    assert saved.config.passage_max_length == 40 and saved.config.query_max_length == 8
    cfg["serving"] = {"passage_max_lenght": 40}
    cfg["output_dir"] = "out2/model"
    cfg_path.write_text(json.dumps(cfg))
    assert main(["--task", "retriever", "--config", str(cfg_path)]) == 2
    assert "field 'serving.passage_max_lenght'" in capsys.readouterr().err
