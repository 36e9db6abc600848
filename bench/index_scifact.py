"""Approximate indexes against exact search on real retriever embeddings of SciFact.

Takes the corpus vectors of a saved index (default: the pipeline's ``warmup_index`` under
``$JRR_HOME``) and query vectors from the matching retriever, then reports recall@10 against the
exact ``Flat`` top-10 and search throughput (queries/s, one thread and all threads) for HNSW and
IVF variants. Not run by the tests.

    .venv/bin/python bench/index_scifact.py [--home .jrr] [--dataset scifact] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np

from jrr_pipeline.ml.index import build_index, load_index, set_search_params

VARIANTS = [  # (factory, efSearch, nprobe)
    ("HNSW32", 64, 0),
    ("HNSW32", 128, 0),
    ("IVF64,Flat", 0, 8),
    ("IVF64,Flat", 0, 16),
    ("IVF64,PQ32x8", 0, 16),
]


def queries_of(data_dir: Path) -> list[str]:
    ids = set()
    for line in (data_dir / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        if line.strip():
            ids.add(line.split("\t")[0])
    texts = []
    for line in (data_dir / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        if str(row["_id"]) in ids:
            texts.append(row["text"])
    return texts


def timed_search(index: faiss.Index, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, float]:
    faiss.omp_set_num_threads(threads)
    best = float("inf")
    rows = None
    for _ in range(3):
        started = time.perf_counter()
        _, rows = index.search(q, k)
        best = min(best, time.perf_counter() - started)
    return rows, len(q) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--index", default="warmup_index")
    parser.add_argument("--retriever", default="warmup_retriever")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent
                                              / "shared/datasets/scifact"))
    parser.add_argument("--out", default="bench/results/index_scifact.json")
    args = parser.parse_args()

    from jrr_pipeline.ml.modeling import DenseRetriever

    artifacts = Path(args.home) / "artifacts" / args.dataset
    flat, _doc_ids = load_index(artifacts / args.index)
    corpus = flat.reconstruct_n(0, flat.ntotal)
    retriever = DenseRetriever.from_pretrained(str(artifacts / args.retriever)).eval()
    queries = retriever.embed(queries_of(Path(args.data)), kind="query", batch_size=64)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    threads = os.cpu_count() or 1

    exact, flat_qps = timed_search(flat, q, 10, threads)
    rows = [{"factory": "Flat", "recall@10": 1.0, "qps_all_threads": round(flat_qps, 1),
             "qps_1_thread": round(timed_search(flat, q, 10, 1)[1], 1), "build_s": 0.0}]
    for factory, ef, nprobe in VARIANTS:
        started = time.perf_counter()
        index = build_index(corpus, factory=factory, use_gpu="never")
        build_s = time.perf_counter() - started
        set_search_params(index, hnsw_ef_search=ef or 128, nprobe=nprobe or 16)
        found, qps = timed_search(index, q, 10, threads)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)])
        rows.append({"factory": factory, "efSearch": ef or None, "nprobe": nprobe or None,
                     "recall@10": round(float(recall), 4), "qps_all_threads": round(qps, 1),
                     "qps_1_thread": round(timed_search(index, q, 10, 1)[1], 1),
                     "build_s": round(build_s, 2)})
    result = {"corpus": int(flat.ntotal), "dim": int(flat.d), "queries": len(q), "threads": threads,
              "rows": rows}
    for row in rows:
        print(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
