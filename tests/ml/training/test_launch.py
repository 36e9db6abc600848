"""The training launcher on warm-up run files, in-process (torchrun is covered elsewhere)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.settings import WarmupRerankerSettings, WarmupRetrieverSettings
from jrr_pipeline.ml.training.checkpoint import load_training_state
from jrr_pipeline.ml.training.launch import main, read_run_file, run, write_run_file

WORDS = ["apple", "river", "music", "window", "garden", "doctor", "planet", "winter"]


def tables() -> dict[str, pl.DataFrame]:
    n = len(WORDS)
    return {
        "corpus": pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "title": WORDS,
                                "text": [f"about {w}" for w in WORDS]}),
        "queries": pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "text": WORDS}),
        "qrels": pl.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                               "doc_id": [f"d{i}" for i in range(n)], "relevance": [1] * n,
                               "split": ["train"] * (n - 2) + ["test"] * 2}),
        "negatives": pl.DataFrame({"query_id": [f"q{i}" for i in range(n) for _ in range(3)],
                                   "doc_id": [f"d{(i + k) % n}" for i in range(n) for k in (1, 2, 3)],
                                   "rank": [1, 2, 3] * n, "score": [3.0, 2.0, 1.0] * n,
                                   "source": ["bm25"] * (3 * n)}),
    }


def settings(stage: str, model_dir, **changes):
    common = {"base_model": str(model_dir), "n_negatives": 2, "rank_window_end": 3,
              "max_steps": 4, "batch_size": 3, "lr": 1e-3, "log_every": 2,
              "checkpoint_every": 2, "seed": 1}
    if stage == "warmup_reranker":
        return WarmupRerankerSettings(**{**common, "max_length": 32, **changes})
    return WarmupRetrieverSettings(**{**common, "query_max_length": 8, "passage_max_length": 16,
                                      "index_passage_max_length": 0, **changes})


def write(tmp_path, stage, model_dir, **changes):
    return write_run_file(tmp_path / "run", stage, settings(stage, model_dir, **changes), tables(),
                          tmp_path / "out" / "model", tmp_path / "out" / "state", progress=False)


@pytest.mark.parametrize("stage", ["warmup_retriever", "warmup_reranker"])
def test_a_run_file_trains_and_writes_outputs(tiny_model_dir, tmp_path, stage) -> None:
    path = write(tmp_path, stage, tiny_model_dir)
    assert main(["--config", str(path)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert {"loss", "lr", "examples_per_s"} <= set(lines[0]["metrics"])
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["completed"] and result["step"] == 4 and result["n_examples"] == 6
    assert [p.name for p in (tmp_path / "out/state").iterdir()] == ["step-00000004"]
    # the saved model holds the weights training ended with (the last checkpoint's)
    loader = DenseRetriever if stage == "warmup_retriever" else CrossEncoderReranker
    saved = loader.from_pretrained(str(tmp_path / "out/model")).state_dict()
    (final,) = load_training_state(tmp_path / "out/state").modules.values()
    assert final.keys() == saved.keys()
    for key, value in final.items():
        assert torch.equal(value, saved[key]), key


def test_the_run_file_carries_every_setting(tiny_model_dir, tmp_path) -> None:
    path = write(tmp_path, "warmup_retriever", tiny_model_dir, temperature=0.1)
    spec = read_run_file(path)
    assert spec.settings == settings("warmup_retriever", tiny_model_dir, temperature=0.1)
    assert spec.data["negatives"] == tmp_path / "run" / "negatives.parquet"


def test_run_file_errors_name_the_field(tiny_model_dir, tmp_path, capsys) -> None:
    path = write(tmp_path, "warmup_retriever", tiny_model_dir)
    good = json.loads(path.read_text())
    for change, message in (
            ({"settings": {**good["settings"], "batch_sise": 4}},
             "warmup_retriever.batch_sise: unknown setting"),
            ({"settings": {**good["settings"], "lr": -1}}, "warmup_retriever.lr = -1: must be > 0"),
            ({"data": {**good["data"], "qrels": "missing.parquet"}}, "field 'data.qrels'"),
            ({"stage": "retriever"}, "field 'stage'")):
        path.write_text(json.dumps({**good, **change}))
        assert main(["--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err


def test_serving_fields_reach_the_checkpoint_only(tiny_model_dir, tmp_path) -> None:
    run(write(tmp_path, "warmup_retriever", tiny_model_dir, index_passage_max_length=40))
    saved = DenseRetriever.from_pretrained(str(tmp_path / "out" / "model"))
    assert saved.config.passage_max_length == 40 and saved.config.query_max_length == 8
