"""Post-hoc reranking settings on a materialized `$JRR_HOME`: depth, fusion weight and inference
length, chosen on dev, with test beside it.

Takes a retriever and its index (default: the joint retriever and `faiss_index`), retrieves the dev
and test queries' top-100, scores each query's top-max(`--depths`) once per `--lengths` value
(query + passage tokens; the reranker's own length when omitted) with the saved reranker, and for
every (depth, fusion weight, length) prints dev and test figures side by side (fused as the report
does; weight 1 is the reranker alone; below the depth the first stage's order is kept). The best
setting is chosen on dev only (by `--measure`); its test figure is printed once, after the choice.
Without a dev split nothing is chosen. Not run by the tests.

    .venv/bin/python bench/rerank_settings.py [--depths 20,100] [--weights 0.3,0.5,0.7,1]
        [--lengths 128,256] [--retriever joint_retriever --index faiss_index
        --reranker joint_reranker]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

MEASURES = ("nDCG@10", "RR@10", "MAP", "R@100")
SELECTION_SPLIT = "dev"
REPORT_SPLIT = "test"


def parse_list(text: str, kind: type, name: str) -> list:
    """'20,100' -> [20, 100] (``kind`` int or float); empty or bad items raise ValueError."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"--{name}: no values in {text!r}")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated {kind.__name__}s, got {text!r}") from None


def parse_weights(text: str) -> list[float]:
    """Fusion weights, each in [0, 1] (1 = the reranker alone)."""
    weights = parse_list(text, float, "weights")
    bad = [w for w in weights if not 0.0 <= w <= 1.0]
    if bad:
        raise ValueError(f"--weights: {bad} outside [0, 1]")
    return weights


def best_on_dev(rows: Sequence[dict[str, Any]], measure: str = "nDCG@10") -> dict[str, Any]:
    """The row whose ``rows[i]["dev"][measure]`` is highest (the first such row on a tie: list
    the cheaper settings first). Test figures are never read, so they cannot steer the choice."""
    if not rows:
        raise ValueError("best_on_dev: no settings to choose from")
    missing = [i for i, row in enumerate(rows) if measure not in row.get(SELECTION_SPLIT, {})]
    if missing:
        raise ValueError(f"best_on_dev: rows {missing} have no {SELECTION_SPLIT} {measure}")
    return max(rows, key=lambda row: row[SELECTION_SPLIT][measure])  # max keeps the first tie


def _figures(run: dict, qrels, splits: Sequence[str]) -> dict[str, dict[str, float]]:
    from jrr_pipeline.ml.evaluation import evaluate

    return {split: {m: round(v, 4) for m, v in evaluate(run, qrels, MEASURES, split=split).items()}
            for split in splits}


def main() -> None:
    import polars as pl

    from jrr_pipeline.assets.evaluation import dense_run
    from jrr_pipeline.ml import fusion
    from jrr_pipeline.ml.inference import autocast_dtype
    from jrr_pipeline.ml.modeling import CrossEncoderReranker
    from jrr_pipeline.ml.text import passage_texts, query_texts
    from jrr_pipeline.resources.artifacts import ArtifactStore
    from jrr_pipeline.resources.compute import Compute
    from jrr_pipeline.resources.warehouse import Warehouse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--retriever", default="joint_retriever")
    parser.add_argument("--index", default="faiss_index")
    parser.add_argument("--reranker", default="joint_reranker")
    parser.add_argument("--first-depth", type=int, default=100, help="first-stage depth")
    parser.add_argument("--depths", default="20,100", help="rerank depths, cheapest first")
    parser.add_argument("--weights", default="0.3,0.5,0.7,1",
                        help="fusion weights w: w * z(reranker) + (1 - w) * z(first stage)")
    parser.add_argument("--lengths", default="", help="comma list; empty = the saved length")
    parser.add_argument("--measure", default="nDCG@10", choices=MEASURES,
                        help="the dev measure the setting is chosen by")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    depths = parse_list(args.depths, int, "depths")
    weights = parse_weights(args.weights)

    warehouse, artifacts, compute = Warehouse(), ArtifactStore(), Compute()
    compute.apply_threads()
    qrels = warehouse.table("qrels")
    splits = [s for s in (SELECTION_SPLIT, REPORT_SPLIT) if s in set(qrels["split"].to_list())]
    query_ids = sorted(qrels.filter(pl.col("split").is_in(splits))["query_id"].unique().to_list())
    texts = query_texts(warehouse.table("queries"), query_ids)
    first = dense_run(artifacts, args.dataset, args.retriever, args.index, texts, query_ids,
                      args.first_depth, compute)
    print(json.dumps({"first_stage": args.retriever, **_figures(first, qrels, splits)}))

    reranker = CrossEncoderReranker.from_pretrained(str(artifacts.path(args.dataset, args.reranker)))
    reranker = reranker.to(compute.torch_device()).eval()
    trained_length = reranker.config.max_length
    corpus = warehouse.table("corpus")
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    dtype = autocast_dtype(compute.use_bf16())
    lengths = [int(x) for x in args.lengths.split(",") if x] or [trained_length]
    rows = []
    for length in lengths:
        reranker.config.max_length = length
        started = time.perf_counter()
        scores = fusion.rerank_scores(reranker, first, dict(zip(query_ids, texts, strict=True)),
                                      passages, max(depths), batch_size=args.batch_size,
                                      progress=True, autocast_dtype=dtype)
        seconds = round(time.perf_counter() - started, 1)
        for depth in depths:
            for weight in weights:
                run = fusion.reranked(first, scores, depth, weight)
                row = {"depth": depth, "fusion_weight": weight, "max_length": length,
                       "trained_length": trained_length, "scoring_seconds": seconds,
                       **_figures(run, qrels, splits)}
                rows.append(row)
                print(json.dumps(row), flush=True)

    if SELECTION_SPLIT not in splits:
        print(json.dumps({"selected_on": None, "note": f"no {SELECTION_SPLIT} split: nothing "
                          f"is chosen ({REPORT_SPLIT} is never used to choose)"}))
        return
    best = best_on_dev(rows, args.measure)
    print(json.dumps({
        "selected_on": SELECTION_SPLIT, "measure": args.measure,
        "setting": {k: best[k] for k in ("depth", "fusion_weight", "max_length")},
        f"{SELECTION_SPLIT}_{args.measure}": best[SELECTION_SPLIT][args.measure],
        f"{REPORT_SPLIT}_{args.measure}": best.get(REPORT_SPLIT, {}).get(args.measure),
    }))


if __name__ == "__main__":
    main()
