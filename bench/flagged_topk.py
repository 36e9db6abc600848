"""How many BM25 and dense top-k candidates of the SciFact train queries the warm-up reranker flags
as likely false negatives (the denoised_candidates decision rule at another depth, nothing written
to the store). Not run by the tests.

    JRR_HOME=.jrr .venv/bin/python bench/flagged_topk.py [--top-k 30]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="bench/results/flagged_top30.json")
    args = parser.parse_args()

    import polars as pl

    from jrr_pipeline.assets.candidates import score_frame
    from jrr_pipeline.ml.denoise import calibrate, decide, denoise_stats
    from jrr_pipeline.ml.modeling import CrossEncoderReranker
    from jrr_pipeline.ml.text import passage_texts
    from jrr_pipeline.resources import ArtifactStore, Warehouse
    from jrr_pipeline.settings import resolve_settings

    warehouse = Warehouse()
    config = resolve_settings("cpu", {"denoised_candidates": {"top_k": args.top_k}})[
        "denoised_candidates"]
    frame = score_frame(warehouse, config)
    corpus = warehouse.table("corpus")
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    queries = warehouse.table("queries")
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    reranker = CrossEncoderReranker.from_pretrained(
        str(ArtifactStore().path(args.dataset, "warmup_reranker"))).eval()
    pairs = [(text[q], passages[d]) for q, d in frame.select("query_id", "doc_id").iter_rows()]
    started = time.perf_counter()
    scores = reranker.predict(pairs, batch_size=args.batch_size, progress=True)
    seconds = time.perf_counter() - started
    decided = decide(calibrate(frame.with_columns(ce_score=pl.Series(scores, dtype=pl.Float64)),
                               config.calibration), config)
    stats = {"top_k": args.top_k, "pairs": len(pairs), "seconds": round(seconds, 1),
             **denoise_stats(decided)}
    print(json.dumps(stats, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
