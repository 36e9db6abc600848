"""Ablation of joint training on SciFact test: RocketQAv2 dynamic vs static, AR2 with vs without
index refresh.

Each variant starts from the materialized warm-up retriever and reranker and the `candidates` table
of a `$JRR_HOME` (run `jrr run ../shared/datasets/scifact` first), trains with the `cpu` preset's
`joint_models` settings plus the variant's overrides (through the same training launcher the
asset uses), then encodes the corpus with the trained retriever (its serving length) and evaluates
the retriever alone (nDCG@10, R@100) and, with `--pair`, the pair: the trained reranker over the
retriever's top-`--rerank-depth`, fused as the report does. Not run by the tests.

    .venv/bin/python bench/ablation_joint.py [--variants dynamic,paper,in_batch,static,ar2,ar2_norefresh] [--pair]
        [--custom 'NAME={"retriever_lr": 3e-5, "max_steps": 100}']
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import polars as pl

# On top of the cpu preset's joint_models defaults (RocketQAv2 dynamic, retriever CE weight 1.0,
# retriever lr 3e-5); "paper" is RocketQAv2's own loss at the earlier lr.
VARIANTS: dict[str, dict] = {
    "dynamic": {},
    "paper": {"retriever_ce_weight": 0.0, "retriever_lr": 1e-5},
    "in_batch": {"retriever_in_batch": True},
    "static": {"mode": "static"},
    "ar2": {"method": "ar2"},
    "ar2_norefresh": {"method": "ar2", "ar2_refresh_every": 0},
}


def run_variant(name: str, overrides: dict, home: Path, dataset: str, work: Path, pair: bool,
                depth: int, weight: float) -> dict:
    from jrr_pipeline.ml.evaluation import evaluate, monitor_split
    from jrr_pipeline.ml.fusion import rerank_run
    from jrr_pipeline.ml.index import build_index, encode_corpus, search
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
    from jrr_pipeline.ml.sparse import run_from_search
    from jrr_pipeline.ml.text import passage_texts
    from jrr_pipeline.ml.training.launch import run, write_run_file
    from jrr_pipeline.resources import Warehouse
    from jrr_pipeline.settings import resolve_settings

    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    tables = {t: warehouse.table(t) for t in ("queries", "corpus", "qrels", "candidates")}
    artifacts = home / "artifacts" / dataset
    settings = resolve_settings("cpu", {"joint_models": overrides})["joint_models"]
    run_file = write_run_file(out / "run", "joint_models", settings, tables, out / "model",
                              out / "work", eval_split=monitor_split(tables["qrels"]),
                              models={"retriever": str(artifacts / "warmup_retriever"),
                                      "reranker": str(artifacts / "warmup_reranker")})
    started = time.perf_counter()
    result = run(run_file)
    train_s = time.perf_counter() - started

    corpus, queries, qrels = tables["corpus"], tables["queries"], tables["qrels"]
    retriever = DenseRetriever.from_pretrained(str(out / "model" / "retriever")).eval()
    started = time.perf_counter()
    index = build_index(encode_corpus(retriever, corpus, batch_size=64, progress=True))
    encode_s = time.perf_counter() - started
    qids = sorted(qrels.filter(pl.col("split") == "test")["query_id"].unique().to_list())
    qtext = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    doc_ids = corpus["doc_id"].to_list()
    hits, scores = search(index, doc_ids, retriever.embed([qtext[q] for q in qids], kind="query"), 100)
    first_stage = run_from_search(qids, hits, scores)
    measures = ["nDCG@10", "R@100"]
    row: dict = {"variant": name, "overrides": overrides, "steps": result.get("steps"),
                 "lists": result["lists"], "train_s": round(train_s, 1),
                 "encode_s": round(encode_s, 1),
                 **{k: round(v, 4) for k, v in evaluate(first_stage, qrels, measures,
                                                        split="test").items()}}
    if pair:
        reranker = CrossEncoderReranker.from_pretrained(str(out / "model" / "reranker")).eval()
        ptext = dict(zip(doc_ids, passage_texts(corpus), strict=True))
        started = time.perf_counter()
        fused, alone = rerank_run(reranker, first_stage, qtext, ptext, depth, weight,
                                  progress=True)
        row["rerank_s"] = round(time.perf_counter() - started, 1)
        row[f"pair_top{depth}_nDCG@10"] = round(evaluate(fused, qrels, ["nDCG@10"], split="test")
                                                ["nDCG@10"], 4)
        row[f"reranker_alone_top{depth}_nDCG@10"] = round(
            evaluate(alone, qrels, ["nDCG@10"], split="test")["nDCG@10"], 4)
    if "iterations" in result:
        row["refresh_eval"] = [{k: v for k, v in it.items() if k.startswith("eval_")}
                               for it in result["iterations"]]
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--custom", action="append", default=[], metavar="NAME=JSON",
                        help='an extra variant, e.g. lr3e-5=\'{"retriever_lr": 3e-5}\' (repeatable)')
    parser.add_argument("--pair", action="store_true", help="also evaluate the trained pair")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--fusion-weight", type=float, default=0.5)
    parser.add_argument("--work", default="bench/results/ablation_joint")
    parser.add_argument("--out", default="bench/results/ablation_joint.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    variants = dict(VARIANTS)
    for item in args.custom:
        name, _, raw = item.partition("=")
        variants[name] = json.loads(raw)
    names = [n for n in args.variants.split(",") if n] + [i.partition("=")[0] for i in args.custom]
    unknown = sorted(set(names) - set(variants))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(variants)}")
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in names:
        row = run_variant(name, variants[name], Path(args.home).resolve(), args.dataset,
                          Path(args.work).resolve(), args.pair, args.rerank_depth, args.fusion_weight)
        print(row, flush=True)
        rows = [r for r in rows if r["variant"] != name] + [row]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
    print("| variant | nDCG@10 | R@100 | train s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['nDCG@10']:.4f} | {r['R@100']:.4f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
