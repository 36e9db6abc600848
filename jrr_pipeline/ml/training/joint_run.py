"""CLI for joint training (RocketQAv2 or AR2), so a caller can launch it under torchrun.

    python -m jrr_pipeline.ml.training.joint_run --config joint.json

The JSON (relative paths resolve against its directory):

    {
      "method": "rocketqav2" | "ar2",
      "retriever": "warmup_retriever/", "reranker": "warmup_reranker/",   # checkpoints to start from
      "data": {"queries": "q.parquet", "corpus": "c.parquet", "qrels": "qrels.parquet",
               "candidates": "candidates.parquet"},
      "list_length": 8,
      "rocketqav2": {"mode": "dynamic" | "static", "kl_temperature": 1.0,
                     "grad_cache_chunk": 0, "chunk_pairs": 0, "retriever_ce_weight": 0.0,
                     "retriever_in_batch": false},
      "ar2": {...AR2Config fields},
      "train": {...TrainConfig: the RocketQAv2 run, or AR2's retriever phase},
      "ranker_train": {...TrainConfig overrides of AR2's ranker phase},
      "reranker_lr": 1e-5,            # RocketQAv2: the reranker's own learning rate
      "eval_split": "test",           # AR2: evaluate each refresh on this split (monitoring only)
      "train_lengths": {"passage_max_length": 192, "reranker_max_length": 128},   # optional
      "serving": {"passage_max_length": 256},
      "output_dir": "out/model", "work_dir": "out/work",
      "metrics_file": "out/metrics.jsonl", "result_file": "out/result.json", "progress": true
    }

`output_dir` receives `retriever/` and `reranker/`. Rank 0 appends one JSON line per logged step to
`metrics_file`: {"iteration", "phase", "step", "metrics"} (phase "joint" for RocketQAv2, "ranker" /
"retriever" for AR2, and "iteration" lines with each AR2 iteration's refresh figures).
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
from jrr_pipeline.ml.training.run import _path, _read_table

METHODS = ("rocketqav2", "ar2")
_KEYS = {"method", "retriever", "reranker", "data", "list_length", "rocketqav2", "ar2", "train",
         "ranker_train", "reranker_lr", "eval_split", "serving", "train_lengths", "output_dir", "work_dir",
         "metrics_file", "result_file", "progress"}
_TABLES = ("queries", "corpus", "qrels", "candidates")
_ROCKETQA_KEYS = {"mode", "kl_temperature", "grad_cache_chunk", "chunk_pairs", "retriever_ce_weight",
                  "retriever_in_batch"}


def load_joint_config(path: Path) -> dict[str, Any]:
    """Read and validate the JSON; errors name the file and the field."""
    from jrr_pipeline.ml.training.adversarial import AR2Config

    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: config file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ValueError(f"{path}: field '{unknown[0]}': unknown key")
    if cfg.get("method") not in METHODS:
        raise ValueError(f"{path}: field 'method': expected one of {METHODS}, got {cfg.get('method')!r}")
    base = path.parent
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: field 'data': expected an object")
    for table in _TABLES:
        if table not in data:
            raise ValueError(f"{path}: field 'data.{table}': missing")
    for key in ("retriever", "reranker", "output_dir", "work_dir"):
        if key not in cfg:
            raise ValueError(f"{path}: field '{key}': missing")
    length = cfg.get("list_length", 8)
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"{path}: field 'list_length': expected an integer >= 2, got {length!r}")
    rq = dict(cfg.get("rocketqav2", {}))
    bad = sorted(set(rq) - _ROCKETQA_KEYS)
    if bad:
        raise ValueError(f"{path}: field 'rocketqav2.{bad[0]}': unknown key")
    train_dict = cfg.get("train", {})
    train = TrainConfig.from_dict(train_dict, f"{path}: field 'train'")
    ranker_train = TrainConfig.from_dict({**train_dict, **cfg.get("ranker_train", {})},
                                         f"{path}: field 'ranker_train'")
    ar2 = dataclass_from_dict(AR2Config, cfg.get("ar2", {}), f"{path}: field 'ar2'")

    def opt(key: str) -> Path | None:
        return _path(base, cfg[key], path, key) if cfg.get(key) else None

    return {
        "method": cfg["method"],
        "retriever": str(_path(base, cfg["retriever"], path, "retriever")),
        "reranker": str(_path(base, cfg["reranker"], path, "reranker")),
        "data": {t: _path(base, data[t], path, f"data.{t}") for t in _TABLES},
        "list_length": length,
        "rocketqav2": rq,
        "ar2": ar2,
        "train": train,
        "ranker_train": ranker_train,
        "reranker_lr": cfg.get("reranker_lr"),
        "eval_split": cfg.get("eval_split"),
        "serving": dict(cfg.get("serving", {})),
        "train_lengths": _train_lengths(cfg.get("train_lengths", {}), path),
        "output_dir": _path(base, cfg["output_dir"], path, "output_dir"),
        "work_dir": _path(base, cfg["work_dir"], path, "work_dir"),
        "metrics_file": opt("metrics_file"),
        "result_file": opt("result_file"),
        "progress": bool(cfg.get("progress", True)),
    }


def _train_lengths(value: Any, path: Path) -> dict[str, int]:
    allowed = {"query_max_length", "passage_max_length", "reranker_max_length"}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: field 'train_lengths': expected an object")
    for key, length in value.items():
        if key not in allowed:
            raise ValueError(f"{path}: field 'train_lengths.{key}': unknown key")
        if not isinstance(length, int) or length < 8:
            raise ValueError(f"{path}: field 'train_lengths.{key}': expected an integer >= 8")
    return dict(value)


def refresh_data_from(tables: dict[str, pl.DataFrame], eval_split: str | None):
    """RefreshData: train positives from qrels, pseudo positives of the candidates as flagged."""
    from jrr_pipeline.ml.text import passage_texts
    from jrr_pipeline.ml.training.adversarial import RefreshData

    queries, corpus, qrels, candidates = (tables[t] for t in _TABLES)
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    train_pos = qrels.filter((pl.col("split") == "train") & (pl.col("relevance") > 0))
    positives: dict[str, list[str]] = {}
    for qid, did in train_pos.select("query_id", "doc_id").unique(maintain_order=True).iter_rows():
        positives.setdefault(qid, []).append(did)
    flagged: dict[str, set[str]] = {}
    for qid, did, source in candidates.filter(pl.col("label") == 1).select(
            "query_id", "doc_id", "source").iter_rows():
        if source != "qrels":
            flagged.setdefault(qid, set()).add(did)
    eval_text, eval_qrels = {}, None
    if eval_split:
        eval_qrels = qrels.filter(pl.col("split") == eval_split)
        eval_text = {q: text[q] for q in eval_qrels["query_id"].unique().to_list() if q in text}
    return RefreshData(corpus["doc_id"].to_list(), passage_texts(corpus), text, positives,
                       flagged, eval_text, eval_qrels)


def run_joint(config_path: Path) -> dict:
    """Train as ``config_path`` says; returns the result dict (also written to ``result_file``)."""
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
    from jrr_pipeline.ml.training.joint import RocketQAv2Task, build_candidate_lists
    from jrr_pipeline.ml.training.loop import seed_everything, train

    cfg = load_joint_config(config_path)
    tables = {t: _read_table(p, config_path, f"data.{t}") for t, p in cfg["data"].items()}
    lists = build_candidate_lists(tables["queries"], tables["corpus"], tables["candidates"],
                                  cfg["list_length"])
    if not lists:
        raise ValueError(f"{cfg['data']['candidates']}: no query has a positive and "
                         f"{cfg['list_length'] - 1} negatives (list_length {cfg['list_length']})")
    train_cfg: TrainConfig = cfg["train"]
    seed_everything(train_cfg.seed)
    retriever = DenseRetriever.from_pretrained(cfg["retriever"])
    reranker = CrossEncoderReranker.from_pretrained(cfg["reranker"])
    lengths = cfg["train_lengths"]
    for key in ("query_max_length", "passage_max_length"):
        if key in lengths:
            setattr(retriever.config, key, lengths[key])
    if "reranker_max_length" in lengths:
        reranker.config.max_length = lengths["reranker_max_length"]
    metrics_file: Path | None = cfg["metrics_file"]

    def write(record: dict) -> None:
        if metrics_file is not None and is_main_process():
            metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with open(metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    result: dict[str, Any] = {"method": cfg["method"], "lists": len(lists)}
    if cfg["method"] == "rocketqav2":
        rq = cfg["rocketqav2"]
        if cfg["reranker_lr"] is not None:
            mult = float(cfg["reranker_lr"]) / train_cfg.lr
            train_cfg = dataclasses.replace(
                train_cfg, module_lr_multipliers={**train_cfg.module_lr_multipliers, "reranker": mult})
        task = RocketQAv2Task(retriever, reranker, mode=rq.get("mode", "dynamic"),
                              kl_temperature=float(rq.get("kl_temperature", 1.0)),
                              chunk_pairs=int(rq.get("chunk_pairs", 0)), serving=cfg["serving"],
                              grad_cache_chunk=int(rq.get("grad_cache_chunk", 0)),
                              retriever_ce_weight=float(rq.get("retriever_ce_weight", 0.0)),
                              retriever_in_batch=bool(rq.get("retriever_in_batch", False)))
        outcome = train(task, lists, train_cfg, cfg["output_dir"],
                        state_dir=cfg["work_dir"] / "state", progress=cfg["progress"],
                        on_log=lambda step, m: write({"iteration": None, "phase": "joint",
                                                      "step": step, "metrics": m}))
        if not outcome.completed:
            raise RuntimeError("joint training stopped before its last step")
        result.update({"steps": outcome.step, "wall_s": outcome.wall_s, "bf16": outcome.bf16,
                       "world_size": outcome.world_size, "final_loss": outcome.final_loss,
                       "resumed_from_step": outcome.resumed_from_step})
    else:
        from jrr_pipeline.ml.training.adversarial import train_ar2
        from jrr_pipeline.ml.training.distributed import (
            cleanup_distributed,
            init_distributed,
            training_device,
        )

        refresh = refresh_data_from(tables, cfg["eval_split"]) if cfg["ar2"].refresh_every else None
        created_group = init_distributed(training_device())  # refreshes sync ranks between phases
        try:
            summary = train_ar2(
                retriever, reranker, lists, cfg["ar2"], cfg["ranker_train"], train_cfg,
                cfg["work_dir"], cfg["output_dir"], refresh_data=refresh,
                on_log=lambda it, phase, step, m: write({"iteration": it, "phase": phase,
                                                         "step": step, "metrics": m}),
                on_iteration=lambda it, info: write({"iteration": it, "phase": "iteration",
                                                     "step": 0, "metrics": info}),
                progress=cfg["progress"], serving=cfg["serving"])
        finally:
            if created_group:
                cleanup_distributed()
        steps = cfg["ar2"].iterations * (cfg["ar2"].ranker_steps + cfg["ar2"].retriever_steps)
        result.update({"steps": steps, "wall_s": summary["wall_s"],
                       "iterations": summary["iterations"]})
    if cfg["result_file"] is not None and is_main_process():
        write_json_atomic(cfg["result_file"], json.loads(json.dumps(result, default=str)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jrr_pipeline.ml.training.joint_run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON run configuration")
    args = parser.parse_args(argv)
    try:
        run_joint(args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
