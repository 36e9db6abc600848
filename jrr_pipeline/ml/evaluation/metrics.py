"""Retrieval metrics through ir-measures; no hand-written metric code.

ir-measures' default pipeline computes nDCG, R@k and AP with pytrec_eval. RR@k goes to its
msmarco provider on purpose: pytrec_eval has no RR cutoff, and calling ir_measures.pytrec_eval
directly silently returns the uncut reciprocal rank for RR@10 (a test guards this).

Averages are over every query of the evaluated split's qrels: a query the run does not answer
scores 0 (ir-measures alone would average only over the queries present in the run).

One tie-break for every measure: runs reach ir-measures as ranks (``jrr_pipeline.ml.ranking``),
ordered by score, then doc id. pytrec_eval and the msmarco provider break score ties differently,
so without this a run with tied documents got an nDCG@10 and an RR@10 of two different orders. A
reranked run comes from ``jrr_pipeline.ml.fusion`` already ranked, its ties broken by first-stage
order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ir_measures
import polars as pl

from jrr_pipeline.ml.ranking import ranked_run

DEFAULT_MEASURES: tuple[str, ...] = (
    "nDCG@10",
    "RR@10",
    "R@1",
    "R@5",
    "R@10",
    "R@20",
    "R@100",
    "MAP",
)

# The split model selection reads (never test), and where it can come from.
SELECTION_SPLIT = "dev"
DEV_ORIGINS = ("carved from train", "dataset")

# Our report names -> ir-measures names (anything else is passed to ir_measures as is).
_ALIASES = {"MAP": "AP", "MRR@10": "RR@10", "MRR": "RR"}

Run = Mapping[str, Mapping[str, float]]
Qrels = pl.DataFrame | Mapping[str, Mapping[str, int]]


def _parse(name: str) -> ir_measures.Measure:
    try:
        return ir_measures.parse_measure(_ALIASES.get(name, name))
    except (ValueError, NameError, SyntaxError) as err:
        raise ValueError(f"unknown measure {name!r}") from err


def eval_split(qrels: pl.DataFrame) -> str:
    """The split to report on: "test" if the qrels have one, else "dev"; ValueError otherwise."""
    splits = set(qrels["split"].unique().to_list())
    for name in ("test", "dev"):
        if name in splits:
            return name
    raise ValueError(f"qrels have no test or dev split (splits: {sorted(splits)})")


def selection_info(qrels: pl.DataFrame, origin: str = "dataset") -> dict[str, Any]:
    """The report's "selection" block: the split anything tuned on scores is chosen on.

    With a dev split: {"split": "dev", "origin": origin, "queries": N}, ``origin`` saying where
    dev came from ("carved from train" or "dataset"); a "note" is added when there is no test
    split, as the report's own figures are then on dev. Without a dev split:
    {"split": None, "origin": None, "queries": 0, "note": ...}.
    """
    dev = qrels.filter(pl.col("split") == SELECTION_SPLIT)
    if dev.height == 0:
        return {"split": None, "origin": None, "queries": 0,
                "note": "no dev split: no dev figures, and nothing was selected on this "
                        "dataset's scores"}
    if origin not in DEV_ORIGINS:
        raise ValueError(f"selection_info: origin must be one of {DEV_ORIGINS}, got {origin!r}")
    info: dict[str, Any] = {"split": SELECTION_SPLIT, "origin": origin,
                            "queries": dev["query_id"].n_unique()}
    if "test" not in set(qrels["split"].unique().to_list()):
        info["note"] = "no test split: the report's figures are on dev, not held out"
    return info


def monitor_split(qrels: pl.DataFrame) -> str:
    """The split to watch training on (AR2 refreshes; monitoring only, no model selection): dev
    when the qrels have one, else test, else train."""
    splits = set(qrels["split"].unique().to_list())
    return "dev" if "dev" in splits else ("test" if "test" in splits else "train")


def _qrels_dict(qrels: Qrels, split: str | None) -> dict[str, dict[str, int]]:
    if isinstance(qrels, pl.DataFrame):
        missing = {"query_id", "doc_id", "relevance"} - set(qrels.columns)
        if missing:
            raise ValueError(f"qrels frame lacks columns {sorted(missing)}")
        if split is not None:
            if "split" not in qrels.columns:
                raise ValueError("qrels frame has no 'split' column to filter on")
            qrels = qrels.filter(pl.col("split") == split)
        out: dict[str, dict[str, int]] = {}
        for qid, did, rel in qrels.select("query_id", "doc_id", "relevance").iter_rows():
            out.setdefault(str(qid), {})[str(did)] = int(rel)
    else:
        out = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    if not out:
        raise ValueError(f"no qrels for split {split!r}")
    return out


def _run_dict(run: Run, query_ids: set[str]) -> dict[str, dict[str, float]]:
    # Only judged queries matter; dropping the rest keeps pytrec_eval's work small.
    judged = {
        str(q): {str(d): float(s) for d, s in docs.items()}
        for q, docs in run.items()
        if str(q) in query_ids and docs
    }
    return ranked_run(judged)


def _per_query_all(
    run: Run, qrels: Qrels, measures: Sequence[str], split: str | None
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Query ids of the split and {measure name: {query_id: value}} with missing queries at 0."""
    if not measures:
        raise ValueError("no measures requested")
    qrels_d = _qrels_dict(qrels, split)
    parsed = {name: _parse(name) for name in measures}
    names_of: dict[str, list[str]] = {}
    for name, m in parsed.items():
        names_of.setdefault(str(m), []).append(name)
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(qrels_d, 0.0) for name in measures}
    run_d = _run_dict(run, set(qrels_d))
    if run_d:
        unique = list({str(m): m for m in parsed.values()}.values())
        for metric in ir_measures.iter_calc(unique, qrels_d, run_d):
            for name in names_of[str(metric.measure)]:
                values[name][metric.query_id] = float(metric.value)
    return list(qrels_d), values


def evaluate(
    run: Run,
    qrels: Qrels,
    measures: Sequence[str] = DEFAULT_MEASURES,
    split: str | None = "test",
) -> dict[str, float]:
    """Mean of each measure over all queries of `split` in `qrels` (unanswered queries count 0).

    `qrels` is a frame (query_id, doc_id, relevance, split), filtered to `split` unless it is
    None, or a {query_id: {doc_id: relevance}} mapping (taken whole). Keys of the result are the
    names given in `measures` ("MAP" is ir-measures' AP).
    """
    qids, values = _per_query_all(run, qrels, measures, split)
    return {name: sum(values[name].values()) / len(qids) for name in measures}


def per_query(
    run: Run, qrels: Qrels, measure: str = "nDCG@10", split: str | None = "test"
) -> dict[str, float]:
    """{query_id: value} of one measure for every query of the split (unanswered ones at 0)."""
    _, values = _per_query_all(run, qrels, [measure], split)
    return values[measure]
