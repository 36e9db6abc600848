"""Benchmark: BM25 (bm25s Lucene) on SciFact: index time, test metrics, negative mining speed.

Run from the repo root: `.venv/bin/python bench/bm25_scifact.py [--data DIR]`.
Writes bench/results/bm25_scifact.json (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jrr_pipeline.ml.data import load_dataset  # noqa: E402
from jrr_pipeline.ml.evaluation import evaluate, markdown_table  # noqa: E402
from jrr_pipeline.ml.io import atomic_write_json  # noqa: E402
from jrr_pipeline.ml.sparse import (  # noqa: E402
    BM25Index,
    BM25IndexSettings,
    corpus_texts,
    mine_negatives,
    run_from_search,
)


def load_beir(data_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, str]:
    ds = load_dataset(data_dir)
    return ds.corpus, ds.queries, ds.qrels, "jrr_pipeline.ml.data.load_dataset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "datasets" / "scifact"
    )
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "bm25_scifact.json"
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    corpus, queries, qrels, loader = load_beir(args.data)
    t_load = time.perf_counter() - t0

    config = BM25IndexSettings()
    t0 = time.perf_counter()
    index = BM25Index.build(
        corpus["doc_id"].to_list(), corpus_texts(corpus, config.include_title), config
    )
    t_build = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index.save(Path(tmp) / "bm25")
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = BM25Index.load(Path(tmp) / "bm25")
        t_loadidx = time.perf_counter() - t0

    test_qids = qrels.filter(pl.col("split") == "test")["query_id"].unique().sort().to_list()
    texts = dict(zip(queries["query_id"], queries["text"], strict=True))
    t0 = time.perf_counter()
    docs, scores = index.search([texts[q] for q in test_qids], args.k, n_threads=args.threads)
    t_search = time.perf_counter() - t0
    metrics = evaluate(run_from_search(test_qids, docs, scores), qrels, split="test")

    t0 = time.perf_counter()
    negatives = mine_negatives(
        index, queries, qrels, k=args.k, split="train", n_threads=args.threads
    )
    t_mine = time.perf_counter() - t0
    n_train = qrels.filter(pl.col("split") == "train")["query_id"].n_unique()

    result = {
        "dataset": args.data.name,
        "loader": loader,
        "config": config.__dict__,
        "num_docs": index.num_docs,
        "timings_s": {
            "load_data": t_load,
            "build_index": t_build,
            "save_index": t_save,
            "load_index": t_loadidx,
            "search_test": t_search,
            "mine_train": t_mine,
        },
        "test": {"num_queries": len(test_qids), "qps": len(test_qids) / t_search, **metrics},
        "mining": {
            "num_queries": n_train,
            "k": args.k,
            "rows": negatives.height,
            "qps": n_train / t_mine,
        },
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
    }
    print(f"data: {index.num_docs} docs via {loader}")
    print(markdown_table({"bm25": metrics}))
    print()
    for name, seconds in result["timings_s"].items():
        print(f"{name:>12}: {seconds:.3f} s")
    print(f"test search: {result['test']['qps']:.0f} q/s over {len(test_qids)} queries")
    print(
        f"mining: {n_train} train queries, {negatives.height} negatives, "
        f"{result['mining']['qps']:.0f} q/s ({t_mine:.3f} s)"
    )
    atomic_write_json(args.out, result, sort_keys=False, newline=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
