"""The training stages of a preset on whatever device torch finds (CUDA when there is one),
without Dagster or MLflow: for a machine that cannot install the whole pipeline.

Reads the tables the assets read, exported as Parquet from a materialized `$JRR_HOME` (`corpus`,
`queries`, `qrels` with its dev split, `negatives` with the BM25 rows, `candidates`), trains the
warm-up retriever, the warm-up reranker, the joint pair with RocketQAv2 and with AR2 through the
launcher the assets use (`ml/training/launch.py`), then evaluates every retriever (and the joint
pairs, fused as the report does) on dev and test: FAISS Flat over the corpus encoded on the
device. Prints and writes per stage: wall seconds, steps, lists (or examples) per second, peak
device memory, bf16 or not. The joint stages start from this run's warm-up checkpoints but read
the exported candidate lists (the home's denoised_candidates, made by its own warm-up models).
Not run by the tests.

    python bench/gpu_stages.py --tables DIR --base-model DIR --preset gpu --work /tmp/w \\
        --out results.json [--set joint_models.list_length=8]

Export the tables from a home with `python bench/gpu_stages.py --export HOME --tables DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_defaults import evaluate_models  # noqa: E402

TABLES = {"corpus": "SELECT * FROM corpus", "queries": "SELECT * FROM queries",
          "qrels": "SELECT * FROM qrels",
          "negatives": "SELECT * FROM negatives WHERE source = 'bm25'",
          "candidates": "SELECT * FROM candidates"}


def export(home: Path, folder: Path) -> None:
    """The home's warehouse tables that training reads, as Parquet files in ``folder``."""
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in TABLES.items():
        frame = warehouse.query(sql)
        frame.write_parquet(folder / f"{name}.parquet", compression="zstd")
        print(f"{name}: {frame.height} rows", flush=True)


def device_info() -> dict:
    import torch

    from jrr_pipeline.ml.precision import use_bf16
    from jrr_pipeline.ml.training.distributed import training_device

    device = training_device()
    info = {"device": str(device), "torch": torch.__version__,
            "bf16": use_bf16("auto", device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        info["faiss"] = None
    return info


def peak_memory_gib() -> float:
    import torch

    if not torch.cuda.is_available():
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def train_stage(stage: str, settings, tables: dict[str, pl.DataFrame], work: Path,
                models: dict[str, str] | None = None, eval_split: str | None = None) -> dict:
    """Train one stage through the assets' launcher; returns timings and rates."""
    import torch

    from jrr_pipeline.ml.training.launch import run, write_run_file

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_file = write_run_file(work / "run", stage, settings, tables, work / "model",
                              work / "state", models=models, eval_split=eval_split)
    started = time.perf_counter()
    result = run(run_file)
    wall = time.perf_counter() - started
    steps = int(result.get("steps") or result.get("step") or 0)
    batch = int(getattr(settings, "batch_size", 0))
    train_s = float(result.get("wall_s") or wall)
    row = {"wall_s": round(wall, 1), "train_s": round(train_s, 1), "steps": steps,
           "batch_size": batch, "per_s": round(steps * batch / max(train_s, 1e-9), 2),
           "bf16": result.get("bf16"), "peak_device_gib": peak_memory_gib()}
    if "iterations" in result:
        row["iterations"] = result["iterations"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a JRR_HOME to export the tables from")
    parser.add_argument("--tables", type=Path, required=True)
    parser.add_argument("--base-model", default="default")
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.KNOB=V")
    parser.add_argument("--work", type=Path, default=Path("bench/results/gpu_stages"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_stages.json"))
    parser.add_argument("--stages", default="warmup_retriever,warmup_reranker,rocketqav2,ar2")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.export:
        export(args.export, args.tables)
        return

    from jrr_pipeline.ml.evaluation import monitor_split
    from jrr_pipeline.settings import parse_assignments, resolve_settings

    user = parse_assignments(args.set)
    for stage in ("warmup_retriever", "warmup_reranker"):
        user.setdefault(stage, {}).setdefault("base_model", args.base_model)
    resolved = resolve_settings(args.preset, user)
    tables = {name: pl.read_parquet(args.tables / f"{name}.parquet") for name in TABLES}
    corpus, queries, qrels = tables["corpus"], tables["queries"], tables["qrels"]
    evaluation = resolved["evaluation_report"]
    report: dict = {"machine": device_info(), "preset": args.preset, "overrides": user,
                    "stages": {}}
    print(report["machine"], flush=True)
    wanted = args.stages.split(",")
    device = report["machine"]["device"]

    def record(name: str, row: dict) -> None:
        report["stages"][name] = row
        print(name, {k: v for k, v in row.items() if k != "iterations"}, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))

    def evaluated(name: str, model_dir: Path, stage: str, pair: bool) -> dict:
        started = time.perf_counter()
        row = evaluate_models(model_dir, stage, corpus, queries, qrels, pair,
                              evaluation.rerank_depth, evaluation.rerank_fusion_weight, device)
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        row["eval_s"] = round(time.perf_counter() - started, 1)
        return row

    warm = {"queries": queries, "corpus": corpus, "qrels": qrels,
            "negatives": tables["negatives"]}
    warm_dirs = {}
    for stage in ("warmup_retriever", "warmup_reranker"):
        if stage not in wanted:
            continue
        settings = resolved[stage]
        models = ({"reranker": str(warm_dirs["warmup_reranker"])}
                  if getattr(settings, "needs_reranker", lambda: False)() else None)
        row = train_stage(stage, settings, warm, args.work / stage, models=models)
        warm_dirs[stage] = args.work / stage / "model"
        if stage == "warmup_retriever":
            row.update(evaluated(stage, warm_dirs[stage], stage, pair=False))
        record(stage, row)
    joint = {"queries": queries, "corpus": corpus, "qrels": qrels,
             "candidates": tables["candidates"]}
    models = {"retriever": str(warm_dirs.get("warmup_retriever", args.base_model)),
              "reranker": str(warm_dirs.get("warmup_reranker", args.base_model))}
    for method in ("rocketqav2", "ar2"):
        if method not in wanted:
            continue
        settings = resolved["joint_models"].replace(method=method)
        row = train_stage("joint_models", settings, joint, args.work / method, models=models,
                          eval_split=monitor_split(qrels))
        row.update(evaluated(method, args.work / method / "model", "joint_models", pair=True))
        record(method, row)
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    args.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
