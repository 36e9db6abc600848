"""CLI for the warm-up tasks, so a caller can launch training under torchrun.

    python -m jrr_pipeline.ml.training.run --task retriever|reranker --config cfg.json

The JSON (relative paths are resolved against its own directory):

    {
      "model":    {"path": "default", ...RetrieverConfig / RerankerConfig fields},
      "data":     {"queries": "queries.parquet", "corpus": "corpus.parquet",
                   "qrels": "qrels.parquet", "negatives": "negatives.parquet"},
      "examples": {"n_negatives": 7, "seed": 42, "split": "train", "source": null,
                   "rank_window": [1, 100]},
      "train":    {...TrainConfig fields},
      "output_dir": "out/model", "state_dir": "out/state",
      "metrics_file": "out/metrics.jsonl", "result_file": "out/result.json",
      "progress": true,
      "serving":  {"passage_max_length": 256}
    }

`model.path` is a base HF model (or "default" for the packaged MiniLM) or a saved folder; with
no other `model` keys a saved folder's own config is used. Rank 0 appends one JSON line
{"step", "metrics"} per log to `metrics_file` and writes the TrainResult to `result_file`.
`serving` (optional) overrides model config fields in the saved checkpoint only, e.g. train on
192-token passages but encode the corpus with 256 (the truncation a served model should use).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from jrr_pipeline.ml.training.checkpoint import write_json_atomic
from jrr_pipeline.ml.training.config import TrainConfig, dataclass_from_dict
from jrr_pipeline.ml.training.distributed import is_main_process
from jrr_pipeline.ml.training.loop import TrainResult, seed_everything, train

_TOP_KEYS = {
    "task", "model", "data", "examples", "train", "output_dir", "state_dir", "metrics_file",
    "result_file", "progress", "serving",
}
_TABLES = ("queries", "corpus", "qrels", "negatives")


def _section(cfg: dict[str, Any], key: str, source: Path, required: bool = True) -> dict:
    value = cfg.get(key, None if required else {})
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field '{key}': expected an object, got {value!r}")
    return value


def _path(base: Path, value: Any, source: Path, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: field '{field}': expected a path string, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _read_table(path: Path, source: Path, field: str) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{source}: field '{field}': file not found: {path}")
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars raises several error types for bad files
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err


def load_run_config(path: Path) -> dict[str, Any]:
    """Read and validate the JSON config; returns it with paths resolved and TrainConfig built."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: config file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{path}: field '{unknown[0]}': unknown key")
    base = path.parent
    data = _section(cfg, "data", path)
    for table in _TABLES:
        if table not in data:
            raise ValueError(f"{path}: field 'data.{table}': missing")
    examples = dict(_section(cfg, "examples", path, required=False))
    allowed = {"n_negatives", "seed", "split", "source", "rank_window", "sampler"}
    bad = sorted(set(examples) - allowed)
    if bad:
        raise ValueError(f"{path}: field 'examples.{bad[0]}': unknown key")
    if "rank_window" in examples:
        examples["rank_window"] = tuple(examples["rank_window"])
    if "output_dir" not in cfg:
        raise ValueError(f"{path}: field 'output_dir': missing")
    resolved = {
        "task": cfg.get("task"),
        "model": dict(_section(cfg, "model", path, required=False)),
        "data": {t: _path(base, data[t], path, f"data.{t}") for t in _TABLES},
        "examples": examples,
        "train": TrainConfig.from_dict(
            _section(cfg, "train", path, required=False), f"{path}: field 'train'"
        ),
        "output_dir": _path(base, cfg["output_dir"], path, "output_dir"),
        "state_dir": _path(base, cfg["state_dir"], path, "state_dir") if cfg.get("state_dir") else None,
        "metrics_file": (
            _path(base, cfg["metrics_file"], path, "metrics_file") if cfg.get("metrics_file") else None
        ),
        "result_file": (
            _path(base, cfg["result_file"], path, "result_file") if cfg.get("result_file") else None
        ),
        "progress": bool(cfg.get("progress", True)),
        "serving": dict(_section(cfg, "serving", path, required=False)),
    }
    return resolved


def _build_task(kind: str, model_cfg: dict[str, Any], source: Path):
    # Imported here so that `--help` and config errors do not pay for importing transformers.
    from jrr_pipeline.ml.modeling import (
        CrossEncoderReranker,
        DenseRetriever,
        RerankerConfig,
        RetrieverConfig,
    )
    from jrr_pipeline.ml.training.warmup import RerankerWarmupTask, RetrieverWarmupTask

    model_cfg = dict(model_cfg)
    model_path = str(model_cfg.pop("path", "default"))
    config_cls = RetrieverConfig if kind == "retriever" else RerankerConfig
    config = None
    if model_cfg:
        model_cfg.setdefault("base_model", model_path)
        config = dataclass_from_dict(config_cls, model_cfg, f"{source}: field 'model'")
    if kind == "retriever":
        return RetrieverWarmupTask(DenseRetriever.from_pretrained(model_path, config))
    return RerankerWarmupTask(CrossEncoderReranker.from_pretrained(model_path, config))


def _serving_overrides(task, serving: dict[str, Any], source: Path) -> dict[str, Any]:
    model = task.modules()
    config = next(iter(model.values())).config
    unknown = sorted(set(serving) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise ValueError(f"{source}: field 'serving.{unknown[0]}': not a field of {type(config).__name__}")
    return serving


def run(kind: str, config_path: Path) -> TrainResult:
    """Build the examples and the task described by `config_path`, then train."""
    from jrr_pipeline.ml.training.warmup import build_retrieval_examples

    if kind not in ("retriever", "reranker"):
        raise ValueError(f"--task must be 'retriever' or 'reranker', got {kind!r}")
    cfg = load_run_config(config_path)
    if cfg["task"] not in (None, kind):
        raise ValueError(f"{config_path}: field 'task': {cfg['task']!r} but --task is {kind!r}")
    tables = {t: _read_table(p, config_path, f"data.{t}") for t, p in cfg["data"].items()}
    train_config: TrainConfig = cfg["train"]
    ex = {"n_negatives": 7, "seed": train_config.seed, **cfg["examples"]}
    examples = build_retrieval_examples(**tables, **ex)
    seed_everything(train_config.seed)  # a fresh reranker head is initialised from torch's RNG
    task = _build_task(kind, cfg["model"], config_path)
    task.serving = _serving_overrides(task, cfg["serving"], config_path)

    metrics_file: Path | None = cfg["metrics_file"]

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if metrics_file is not None:
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with open(metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "metrics": metrics}) + "\n")

    result = train(
        task, examples, train_config, cfg["output_dir"], state_dir=cfg["state_dir"],
        on_log=on_log, progress=cfg["progress"],
    )
    if cfg["result_file"] is not None and is_main_process():
        payload = dataclasses.asdict(result)
        payload["n_examples"] = len(examples)
        write_json_atomic(cfg["result_file"], json.loads(json.dumps(payload, default=str)))
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jrr_pipeline.ml.training.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--task", required=True, choices=["retriever", "reranker"])
    parser.add_argument("--config", required=True, type=Path, help="JSON run configuration")
    args = parser.parse_args(argv)
    try:
        run(args.task, args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
