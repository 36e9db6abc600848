"""What the denoising flagged on a materialized dataset: counts per source and sampled pairs to judge.

Reads `denoised_candidates`' latest materialization metadata (counts over every scored candidate)
from the Dagster instance and draws flagged pairs from the `candidates` table: rows drawn from the
undenoised set whose calibrated probability (sigmoid of the gap to the query's positive) is at or
above tau_neg, i.e. the reranker thinks they may be relevant. Not run by the tests.

    .venv/bin/python bench/denoise_report.py [--home .jrr] [--n 20] [--tau-neg 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--tau-neg", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/denoise_report.json")
    args = parser.parse_args()

    home = Path(args.home).resolve()
    os.environ["JRR_HOME"] = str(home)
    from dagster import AssetKey, DagsterInstance

    from jrr_pipeline.resources import Warehouse
    from jrr_pipeline.resources.home import configure_environment

    configure_environment()
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("denoised_candidates"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}
    stats = metadata.get("denoising", {})
    print("denoising over all scored candidates:", json.dumps(stats, indent=1))

    warehouse = Warehouse(path=str(home / "warehouse.duckdb"))
    cands = warehouse.table("candidates")
    best_pos = cands.filter(pl.col("label") == 1).group_by("query_id").agg(
        pl.col("ce_score").max().alias("pos_score"))
    raw = cands.filter(pl.col("source").str.starts_with("raw:")).join(best_pos, on="query_id")
    raw = raw.with_columns(prob=1 / (1 + (-(pl.col("ce_score") - pl.col("pos_score"))).exp()))
    flagged = raw.filter(pl.col("prob") >= args.tau_neg)
    print(f"raw rows in the lists: {raw.height}, of which flagged (prob >= {args.tau_neg}): "
          f"{flagged.height}")
    rng = np.random.default_rng(args.seed)
    picks = flagged[sorted(rng.choice(flagged.height, size=min(args.n, flagged.height), replace=False))]
    queries = dict(warehouse.query("SELECT query_id, text FROM queries").iter_rows())
    corpus = {d: (t, x) for d, t, x in warehouse.query("SELECT doc_id, title, text FROM corpus").iter_rows()}
    pairs = []
    for qid, did, _label, source, _score, _pos, prob in picks.select(
            "query_id", "doc_id", "label", "source", "ce_score", "pos_score", "prob").iter_rows():
        title, text = corpus[did]
        pairs.append({"query_id": qid, "query": queries[qid], "doc_id": did, "source": source,
                      "prob": round(prob, 3), "passage": f"{title}. {text}"[:400]})
        print(f"\n[{qid}] {queries[qid]}\n  -> {did} ({source}, p={prob:.2f}): "
              + textwrap.shorten(f"{title}. {text}", 300))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"stats": stats, "flagged_in_lists": flagged.height,
                                          "raw_in_lists": raw.height, "pairs": pairs}, indent=1))


if __name__ == "__main__":
    main()
