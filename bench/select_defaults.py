"""Choose a stage's defaults on dev: a one-knob-at-a-time sweep, dev and test side by side.

Reads a materialized `$JRR_HOME` (run `jrr run ../shared/datasets/scifact` first: it holds the
warm-up checkpoints, BM25 negatives and candidate lists every variant starts from, and the
`qrels` table with its dev split). The baseline is the `cpu` preset's settings for the stage
(plus `--base`); each `--grid KNOB=v1,v2` adds one variant per value with only that knob changed.
Every variant trains through the same launcher the asset uses, then its retriever (and, with
`--pair`, the pair: the reranker over the retriever's top-`rerank_depth`, fused as the report
does) is evaluated on dev AND test. **The best variant is chosen on dev only**; test is printed
beside it for the record, never used to choose. The paired standard error of each variant's dev
nDCG@10 difference to the baseline says how much of a difference is noise. Not run by the tests.

    .venv/bin/python bench/select_defaults.py --stage warmup_retriever --grid lr=2e-5,5e-5
    .venv/bin/python bench/select_defaults.py --stage joint_models --pair \\
        --grid reranker_lr=3e-5 --grid retriever_ce_weight=0 --grid epochs=2 --grid mode=static
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

import polars as pl

STARTS = {"warmup_retriever": None, "joint_models": ("warmup_retriever", "warmup_reranker")}


def parse_grid(items: list[str]) -> list[tuple[str, object]]:
    """['lr=2e-5,5e-5'] -> [('lr', 2e-5), ('lr', 5e-5)] (JSON values, else text)."""
    out = []
    for item in items:
        knob, _, values = item.partition("=")
        for raw in values.split(","):
            try:
                out.append((knob, json.loads(raw)))
            except ValueError:
                out.append((knob, raw))
    return out


def train_variant(stage: str, settings, home: Path, dataset: str, work: Path) -> tuple[Path, dict]:
    """Train ``settings`` into ``work``; returns (the folder holding the models, result)."""
    from jrr_pipeline.ml.evaluation import monitor_split
    from jrr_pipeline.ml.training.launch import run, write_run_file
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    artifacts = home / "artifacts" / dataset
    if stage == "joint_models":
        tables = {t: warehouse.table(t) for t in ("queries", "corpus", "qrels", "candidates")}
        models = {"retriever": str(artifacts / "warmup_retriever"),
                  "reranker": str(artifacts / "warmup_reranker")}
        run_file = write_run_file(work / "run", stage, settings, tables, work / "model",
                                  work / "state", models=models,
                                  eval_split=monitor_split(tables["qrels"]))
    else:
        tables = {t: warehouse.table(t) for t in ("queries", "corpus", "qrels")}
        tables["negatives"] = warehouse.query("SELECT * FROM negatives WHERE source = 'bm25'")
        # the denoised sampler and TAS-Balanced read the warm-up reranker, as the asset does
        models = ({"reranker": str(artifacts / "warmup_reranker")}
                  if settings.needs_reranker() else None)
        run_file = write_run_file(work / "run", stage, settings, tables, work / "model",
                                  work / "state", models=models)
    result = run(run_file)
    return work / "model", result


def evaluate_variant(model_dir: Path, stage: str, home: Path, pair: bool, depth: int,
                     weight: float) -> dict:
    """nDCG@10 / R@100 of the retriever (and the fused pair) on dev and test, plus the dev
    per-query nDCG@10 (for the paired standard error)."""
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    corpus, queries, qrels = (warehouse.table(t) for t in ("corpus", "queries", "qrels"))
    return evaluate_models(model_dir, stage, corpus, queries, qrels, pair, depth, weight)


def evaluate_models(model_dir: Path, stage: str, corpus: pl.DataFrame, queries: pl.DataFrame,
                    qrels: pl.DataFrame, pair: bool, depth: int, weight: float,
                    device: str = "cpu") -> dict:
    """``evaluate_variant`` over given tables, the models on ``device`` (bf16 where it has it)."""
    import torch

    from jrr_pipeline.ml import fusion
    from jrr_pipeline.ml.evaluation import evaluate, per_query
    from jrr_pipeline.ml.index import build_index, encode_corpus, search
    from jrr_pipeline.ml.inference import autocast_dtype
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
    from jrr_pipeline.ml.precision import use_bf16
    from jrr_pipeline.ml.sparse import run_from_search
    from jrr_pipeline.ml.text import passage_texts, text_by_id

    dtype = autocast_dtype(use_bf16("auto", torch.device(device)))
    retriever_dir = model_dir / "retriever" if stage == "joint_models" else model_dir
    retriever = DenseRetriever.from_pretrained(str(retriever_dir)).to(device).eval()
    started = time.perf_counter()
    index = build_index(encode_corpus(retriever, corpus, batch_size=64, progress=True,
                                      autocast_dtype=dtype))
    row: dict = {"encode_s": round(time.perf_counter() - started, 1)}
    qtext, doc_ids = text_by_id(queries), corpus["doc_id"].to_list()
    passages = dict(zip(doc_ids, passage_texts(corpus), strict=True))
    reranker = (CrossEncoderReranker.from_pretrained(str(model_dir / "reranker")).to(device).eval()
                if pair else None)
    for split in ("dev", "test"):
        qids = sorted(qrels.filter(pl.col("split") == split)["query_id"].unique().to_list())
        if not qids:
            continue
        hits, scores = search(index, doc_ids, retriever.embed(
            [qtext[q] for q in qids], kind="query", autocast_dtype=dtype), 100)
        first = run_from_search(qids, hits, scores)
        for name, value in evaluate(first, qrels, ["nDCG@10", "R@100"], split=split).items():
            row[f"{split}_{name}"] = round(value, 4)
        if split == "dev":
            row["_dev_per_query"] = per_query(first, qrels, "nDCG@10", split=split)
        if reranker is not None:
            fused, alone = fusion.rerank_run(reranker, first, qtext, passages, depth, weight,
                                             progress=True, autocast_dtype=dtype)
            row[f"{split}_pair_nDCG@10"] = round(
                evaluate(fused, qrels, ["nDCG@10"], split=split)["nDCG@10"], 4)
            row[f"{split}_reranker_alone_nDCG@10"] = round(
                evaluate(alone, qrels, ["nDCG@10"], split=split)["nDCG@10"], 4)
            if split == "dev":
                row["_dev_pair_per_query"] = per_query(fused, qrels, "nDCG@10", split=split)
    return row


def paired_se(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """Mean and standard error of the per-query difference b - a."""
    diffs = [b[q] - a[q] for q in a]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    return mean, math.sqrt(var / len(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--stage", choices=sorted(STARTS), required=True)
    parser.add_argument("--base", default="{}", help="JSON overrides of the baseline")
    parser.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2")
    parser.add_argument("--pair", action="store_true", help="also evaluate the fused pair")
    parser.add_argument("--reuse-baseline", action="store_true",
                        help="the home's own materialized models are the baseline (no retrain)")
    parser.add_argument("--work", default="bench/results/select")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from jrr_pipeline.settings import resolve_settings

    home = Path(args.home).resolve()
    base = json.loads(args.base)
    resolved = resolve_settings("cpu", {args.stage: base})
    evaluation = resolved["evaluation_report"]
    variants = [("baseline", resolved[args.stage])]
    for knob, value in parse_grid(args.grid):
        settings = resolve_settings("cpu", {args.stage: {**base, knob: value}})[args.stage]
        variants.append((f"{knob}={value}", settings))
    out = Path(args.out or f"bench/results/select_{args.stage}.json")
    rows = json.loads(out.read_text()) if out.exists() else []
    baseline_dev: dict = {}
    for name, settings in variants:
        work = Path(args.work).resolve() / args.stage / name.replace("/", "_")
        started = time.perf_counter()
        if name == "baseline" and args.reuse_baseline:
            model_dir = home / "artifacts" / args.dataset / (
                "warmup_retriever" if args.stage == "warmup_retriever" else "")
            if args.stage == "joint_models":
                model_dir = work / "model"
                model_dir.mkdir(parents=True, exist_ok=True)
                for sub, asset in (("retriever", "joint_retriever"),
                                   ("reranker", "joint_reranker")):
                    link = model_dir / sub
                    if not link.exists():
                        link.symlink_to(home / "artifacts" / args.dataset / asset)
            result = {"steps": None, "reused": True}
        else:
            model_dir, result = train_variant(args.stage, settings, home, args.dataset, work)
        train_s = time.perf_counter() - started
        row = {"stage": args.stage, "variant": name, "settings": settings.to_dict(),
               "steps": result.get("steps") or result.get("step"),
               "train_s": None if result.get("reused") else round(train_s, 1),
               **evaluate_variant(model_dir, args.stage, home, args.pair,
                                  evaluation.rerank_depth, evaluation.rerank_fusion_weight),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                     2)}
        key = "_dev_pair_per_query" if args.pair else "_dev_per_query"
        if name == "baseline":
            baseline_dev = row[key]
        elif baseline_dev:
            mean, se = paired_se(baseline_dev, row[key])
            row["dev_diff_vs_baseline"] = round(mean, 4)
            row["dev_diff_se"] = round(se, 4)
        for k in [k for k in row if k.startswith("_")]:
            row.pop(k)
        print({k: v for k, v in row.items() if k != "settings"}, flush=True)
        rows = [r for r in rows if not (r["stage"] == args.stage and r["variant"] == name)]
        rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
    measure = "dev_pair_nDCG@10" if args.pair else "dev_nDCG@10"
    mine = [r for r in rows if r["stage"] == args.stage]
    best = max(mine, key=lambda r: r[measure])
    print("\n| variant | dev nDCG@10 | test nDCG@10 | dev pair | test pair | dev diff (se) | "
          "train s |\n|---|---|---|---|---|---|---|")
    for r in mine:
        diff = (f"{r['dev_diff_vs_baseline']:+.4f} ({r['dev_diff_se']:.4f})"
                if "dev_diff_vs_baseline" in r else "")
        print(f"| {r['variant']}{' (best on dev)' if r is best else ''} | {r['dev_nDCG@10']:.4f} "
              f"| {r['test_nDCG@10']:.4f} | {r.get('dev_pair_nDCG@10', '')} | "
              f"{r.get('test_pair_nDCG@10', '')} | {diff} | {r['train_s']} |")
    print(f"\nchosen on dev ({measure}): {best['variant']}; its test figure, for the record: "
          f"{best[measure.replace('dev_', 'test_')]:.4f}")


if __name__ == "__main__":
    main()
