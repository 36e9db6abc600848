"""Ablation: the warm-up retriever retrained on four kinds of negatives, SciFact test nDCG@10.

(a) raw BM25 negatives, (b) dense negatives, (c) the denoised hybrid lists of the `candidates`
table, (d) SimANS sampling over the dense top-100 (scores of the warm-up retriever). Everything
else is the `cpu` preset's warm-up retriever settings. Reads a materialized `$JRR_HOME` (run
`jrr run ../shared/datasets/scifact` first). Not run by the tests.

    .venv/bin/python bench/ablation_negatives.py [--variants bm25,dense,denoised,simans]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl


def negatives_for(variant: str, warehouse, home: Path, dataset: str, n_neg: int, seed: int,
                  a: float, b: float) -> pl.DataFrame:
    """A negatives frame (query_id, doc_id, rank, source) that the examples builder samples from."""
    if variant in ("bm25", "dense"):
        return warehouse.query("SELECT query_id, doc_id, rank, source FROM negatives WHERE source = ?",
                               [variant])
    if variant == "denoised":
        frame = warehouse.query("SELECT query_id, doc_id, ce_score FROM candidates WHERE label = 0")
        return frame.with_columns(rank=pl.int_range(1, pl.len() + 1).over("query_id"),
                                  source=pl.lit("denoised")).drop("ce_score")
    if variant == "simans":
        return simans_negatives(warehouse, home, dataset, n_neg, seed, a, b)
    raise ValueError(f"unknown variant {variant!r}")


def simans_negatives(warehouse, home: Path, dataset: str, n_neg: int, seed: int, a: float,
                     b: float) -> pl.DataFrame:
    """n_neg SimANS draws per train query from the dense top-100, s = warm-up retriever score."""
    from jrr_pipeline.ml.modeling import DenseRetriever
    from jrr_pipeline.ml.sampling import Candidate, SimANSSampler
    from jrr_pipeline.ml.text import passage_texts

    retriever = DenseRetriever.from_pretrained(str(home / "artifacts" / dataset / "warmup_retriever"))
    retriever.eval()
    qrels = warehouse.query("SELECT query_id, doc_id FROM qrels WHERE split = 'train' AND relevance > 0")
    corpus = warehouse.table("corpus")
    text_of = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    queries = warehouse.table("queries")
    qtext = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    qids = sorted(qrels["query_id"].unique().to_list())
    q_emb = retriever.embed([qtext[q] for q in qids], kind="query", batch_size=64)
    pos_ids = qrels.unique().sort("query_id", "doc_id").rows()
    p_emb = retriever.embed([text_of[d] for _, d in pos_ids], kind="passage", batch_size=64)
    row = {q: i for i, q in enumerate(qids)}
    scale = 1.0 / retriever.config.temperature
    pos_score: dict[str, float] = {}
    for (q, _d), vec in zip(pos_ids, p_emb, strict=True):
        s = float(q_emb[row[q]] @ vec) * scale
        pos_score[q] = max(pos_score.get(q, -np.inf), s)
    dense = warehouse.query("SELECT query_id, doc_id, rank, score FROM negatives WHERE source = 'dense'")
    sampler = SimANSSampler(a=a, b=b)
    rng = np.random.default_rng(seed)
    rows = []
    for (qid,), group in dense.sort("query_id", "rank").group_by(["query_id"], maintain_order=True):
        if qid not in pos_score:
            continue
        pool = [Candidate(d, r, s * scale, "dense") for _q, d, r, s in group.iter_rows()]
        for i, c in enumerate(sampler.sample(pool, n_neg, rng, pos_score[qid]), start=1):
            rows.append((qid, c.doc_id, i, "simans"))
    return pl.DataFrame(rows, schema=["query_id", "doc_id", "rank", "source"], orient="row")


def train_and_evaluate(variant: str, negatives: pl.DataFrame, warehouse, work: Path, settings
                       ) -> dict:
    from jrr_pipeline.ml.evaluation import evaluate
    from jrr_pipeline.ml.index import build_index, encode_corpus, search
    from jrr_pipeline.ml.modeling import DenseRetriever
    from jrr_pipeline.ml.sparse import run_from_search
    from jrr_pipeline.ml.training.launch import run, write_run_file

    out = work / variant
    tables = {name: warehouse.table(name) for name in ("queries", "corpus", "qrels")}
    # the warm-up draws its negatives from the rows labelled bm25: here, this variant's rows
    tables["negatives"] = negatives.with_columns(source=pl.lit("bm25"))
    run_file = write_run_file(out / "run", "warmup_retriever", settings, tables, out / "model",
                              out / "state")
    started = time.perf_counter()
    run(run_file)
    train_s = time.perf_counter() - started

    retriever = DenseRetriever.from_pretrained(str(out / "model")).eval()
    corpus, queries, qrels = (warehouse.table(t) for t in ("corpus", "queries", "qrels"))
    index = build_index(encode_corpus(retriever, corpus, batch_size=64, progress=True))
    qids = sorted(qrels.filter(pl.col("split") == "test")["query_id"].unique().to_list())
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    hits, scores = search(index, corpus["doc_id"].to_list(),
                          retriever.embed([text[q] for q in qids], kind="query"), 100)
    metrics = evaluate(run_from_search(qids, hits, scores), qrels, ["nDCG@10", "R@100"], split="test")
    return {"variant": variant, **{k: round(v, 4) for k, v in metrics.items()},
            "train_s": round(train_s, 1), "negative_rows": negatives.height}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--variants", default="bm25,dense,denoised,simans")
    parser.add_argument("--simans-a", type=float, default=0.5)
    parser.add_argument("--simans-b", type=float, default=0.0)
    parser.add_argument("--work", default="bench/results/ablation")
    parser.add_argument("--out", default="bench/results/ablation_negatives.json")
    args = parser.parse_args()

    from jrr_pipeline.resources import Warehouse
    from jrr_pipeline.settings import resolve_settings

    home = Path(args.home).resolve()
    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    cfg = resolve_settings("cpu")["warmup_retriever"]
    rows = []
    for variant in args.variants.split(","):
        negatives = negatives_for(variant, warehouse, home, args.dataset, cfg.n_negatives, cfg.seed,
                                  args.simans_a, args.simans_b)
        rows.append(train_and_evaluate(variant, negatives, warehouse, Path(args.work).resolve(),
                                       cfg))
        print(rows[-1], flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    print("| negatives | nDCG@10 | R@100 | train s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['nDCG@10']:.4f} | {r['R@100']:.4f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
