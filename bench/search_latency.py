"""`jrr search` latency after the models are loaded: median and p95 over SciFact test queries.

Loads the newest stage (joint_retriever + faiss_index once they exist) once, warms up, then answers
N test queries one at a time, with and without reranking. Not run by the tests.

    JRR_HOME=.jrr .venv/bin/python bench/search_latency.py [--n 100] [--rerank-depth 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/search_latency.json")
    args = parser.parse_args()

    import torch

    from jrr_pipeline.cli.search import Searcher
    from jrr_pipeline.resources import ArtifactStore, Warehouse

    torch.set_num_threads(args.threads)
    warehouse = Warehouse()
    queries = warehouse.query(
        "SELECT DISTINCT q.query_id, q.text FROM queries q JOIN qrels r USING (query_id) "
        "WHERE r.split = 'test' ORDER BY q.query_id")["text"].to_list()[: args.n]
    rows = {}
    for rerank in (False, True):
        started = time.perf_counter()
        searcher = Searcher(ArtifactStore().path(args.dataset, ""), warehouse, rerank=rerank,
                            rerank_depth=args.rerank_depth)
        load_s = time.perf_counter() - started
        for q in queries[:5]:
            searcher.search(q, k=args.k)
        parts: dict[str, list[float]] = {}
        for q in queries:
            _, timings = searcher.search(q, k=args.k)
            for name, ms in timings.items():
                parts.setdefault(name, []).append(ms)
        name = f"{searcher.stage}{'+rerank@' + str(args.rerank_depth) if rerank else ''}"
        rows[name] = {"load_s": round(load_s, 2), "queries": len(queries),
                      **{f"{p}_p50": round(float(np.median(v)), 1) for p, v in parts.items()},
                      **{f"{p}_p95": round(float(np.percentile(v, 95)), 1) for p, v in parts.items()}}
        print(name, rows[name], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
