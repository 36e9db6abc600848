"""Post-hoc reranking settings on a materialized `$JRR_HOME`: depth and inference length.

Takes a retriever and its index (default: the joint retriever and `faiss_index`), retrieves the
test queries' top-100, and reranks each query's top-`depth` with the saved reranker scored at
each `--lengths` value (query + passage tokens; the reranker's own length when omitted), fused
with the first stage as the report does. Answers "would top-100 or a longer reranker input beat
the report's top-20 at the trained length?" without retraining. Not run by the tests.

    .venv/bin/python bench/rerank_settings.py [--depths 20,100] [--lengths 128,256]
        [--retriever joint_retriever --index faiss_index --reranker joint_reranker]
"""

from __future__ import annotations

import argparse
import json
import time

import polars as pl

from jrr_pipeline.assets.evaluation import dense_run
from jrr_pipeline.ml import fusion
from jrr_pipeline.ml.evaluation import eval_split, evaluate
from jrr_pipeline.ml.inference import autocast_dtype
from jrr_pipeline.ml.modeling import CrossEncoderReranker
from jrr_pipeline.ml.text import passage_texts, query_texts
from jrr_pipeline.resources.artifacts import ArtifactStore
from jrr_pipeline.resources.compute import Compute
from jrr_pipeline.resources.warehouse import Warehouse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--retriever", default="joint_retriever")
    parser.add_argument("--index", default="faiss_index")
    parser.add_argument("--reranker", default="joint_reranker")
    parser.add_argument("--depths", default="20,100")
    parser.add_argument("--lengths", default="", help="comma list; empty = the saved length")
    parser.add_argument("--fusion-weight", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    warehouse, artifacts, compute = Warehouse(), ArtifactStore(), Compute()
    compute.apply_threads()
    qrels = warehouse.table("qrels")
    split = eval_split(qrels)
    query_ids = sorted(qrels.filter(pl.col("split") == split)["query_id"].unique().to_list())
    texts = query_texts(warehouse.table("queries"), query_ids)
    first = dense_run(artifacts, args.dataset, args.retriever, args.index, texts, query_ids, 100,
                      compute)
    print(json.dumps({"first_stage": args.retriever,
                      "nDCG@10": evaluate(first, qrels, ["nDCG@10"], split=split)["nDCG@10"]}))

    reranker = CrossEncoderReranker.from_pretrained(str(artifacts.path(args.dataset, args.reranker)))
    reranker = reranker.to(compute.torch_device()).eval()
    trained_length = reranker.config.max_length
    corpus = warehouse.table("corpus")
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    dtype = autocast_dtype(compute.use_bf16())
    lengths = [int(x) for x in args.lengths.split(",") if x] or [trained_length]
    for depth in (int(x) for x in args.depths.split(",")):
        for length in lengths:
            reranker.config.max_length = length
            started = time.perf_counter()
            fused, alone = fusion.rerank_run(
                reranker, first, dict(zip(query_ids, texts, strict=True)), passages, depth,
                args.fusion_weight, batch_size=args.batch_size, progress=True, autocast_dtype=dtype)
            print(json.dumps({
                "depth": depth, "max_length": length, "trained_length": trained_length,
                "seconds": round(time.perf_counter() - started, 1),
                "fused_nDCG@10": round(evaluate(fused, qrels, ["nDCG@10"], split=split)["nDCG@10"], 4),
                "reranker_alone_nDCG@10": round(
                    evaluate(alone, qrels, ["nDCG@10"], split=split)["nDCG@10"], 4),
            }), flush=True)


if __name__ == "__main__":
    main()
