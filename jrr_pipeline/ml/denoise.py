"""RocketQA denoising and RocketQAv2 hybrid candidate lists (pure polars + numpy; no torch here).

1. ``merge_retrieved``: each train query's top-k from every negatives source (BM25, dense), one row
   per (query, doc) with the sources that found it and its best rank.
2. ``calibrate``: reranker logits -> probabilities. A listwise-trained cross-encoder's logits are
   only meaningful relative to each other within a query, so the default ``relative`` calibration is
   the probability that the passage beats the query's labelled positive, sigmoid(s - s_pos);
   ``sigmoid`` (pointwise-trained rerankers) and ``softmax`` (over the query's candidates) exist too.
3. ``decide``: negative if prob < tau_neg, pseudo positive if prob > tau_pos and promotion is on,
   otherwise dropped as a likely false negative (Qu et al., RocketQA, NAACL 2021).
4. ``hybrid_lists``: positives + negatives drawn from the undenoised retrieved set and from the
   denoised set in a configured ratio (Ren et al., RocketQAv2, EMNLP 2021), each row labelled with
   why it is there.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from jrr_pipeline.ml.sampling import sample_without_replacement
from jrr_pipeline.ml.settings import DenoisedCandidatesSettings

CALIBRATIONS = ("relative", "sigmoid", "softmax")
DECISIONS = ("negative", "dropped", "pseudo_positive")


def merge_retrieved(negatives: pl.DataFrame, top_k: int, sources: list[str]) -> pl.DataFrame:
    """Top-``top_k`` of each source per query -> (query_id, doc_id, source, rank) where ``source``
    joins the sources that retrieved the doc ('bm25+dense') and ``rank`` is its best rank."""
    frame = negatives.filter(pl.col("source").is_in(sources) & (pl.col("rank") <= top_k))
    return (
        frame.group_by("query_id", "doc_id")
        .agg(pl.col("source").unique().sort().str.join("+"), pl.col("rank").min())
        .sort("query_id", "rank", "doc_id")
    )


def calibrate(frame: pl.DataFrame, method: str = "relative") -> pl.DataFrame:
    """Add ``ce_prob`` from ``ce_score`` (logits). ``frame`` holds every candidate and positive of
    each query, with ``is_positive``; ``relative`` needs at least one positive per query."""
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration {method!r}: choose one of {', '.join(CALIBRATIONS)}")
    if method == "sigmoid":
        return frame.with_columns(ce_prob=1.0 / (1.0 + (-pl.col("ce_score")).exp()))
    if method == "softmax":
        shifted = pl.col("ce_score") - pl.col("ce_score").max().over("query_id")
        return frame.with_columns(ce_prob=shifted.exp() / shifted.exp().sum().over("query_id"))
    pos = pl.when(pl.col("is_positive")).then(pl.col("ce_score")).otherwise(None)
    best_positive = pos.max().over("query_id")
    return frame.with_columns(
        ce_prob=1.0 / (1.0 + (-(pl.col("ce_score") - best_positive)).exp()))


def decide(frame: pl.DataFrame, config: DenoisedCandidatesSettings) -> pl.DataFrame:
    """Add ``decision`` to the non-positive rows: negative / dropped / pseudo_positive."""
    promote = pl.lit(config.promote_pseudo_positives) & (pl.col("ce_prob") > config.tau_pos)
    return frame.with_columns(
        decision=pl.when(pl.col("is_positive")).then(pl.lit("positive"))
        .when(pl.col("ce_prob") < config.tau_neg).then(pl.lit("negative"))
        .when(promote).then(pl.lit("pseudo_positive"))
        .otherwise(pl.lit("dropped"))
    )


def hybrid_lists(decided: pl.DataFrame, config: DenoisedCandidatesSettings) -> tuple[pl.DataFrame, dict]:
    """Per query: its positives (labelled, then pseudo), then ``list_length - 1`` negatives, a
    ``denoised_ratio`` share from the denoised negatives and the rest from the undenoised retrieved
    set (which may include dropped candidates: RocketQAv2's hybrid augmentation). Lists that cannot
    be filled are kept short and counted in the returned stats.

    Returns the ``candidates`` rows (query_id, doc_id, label, source, ce_score) and stats.
    """
    rng = np.random.default_rng(config.seed)
    rows: list[tuple[str, str, int, str, float]] = []
    short: dict[str, int] = {}
    n_neg = config.list_length - 1
    n_denoised = int(round(n_neg * config.denoised_ratio))
    for (qid,), group in decided.sort("query_id", "rank", "doc_id").group_by(
            ["query_id"], maintain_order=True):
        records = group.to_dicts()
        positives = [r for r in records if r["decision"] == "positive"]
        pseudo = [r for r in records if r["decision"] == "pseudo_positive"]
        if not positives:
            continue
        for r in positives:
            rows.append((qid, r["doc_id"], 1, "qrels", float(r["ce_score"])))
        for r in pseudo:
            rows.append((qid, r["doc_id"], 1, f"pseudo_positive:{r['source']}", float(r["ce_score"])))
        clean = [r for r in records if r["decision"] == "negative"]
        retrieved = [r for r in records if r["decision"] in ("negative", "dropped")]
        chosen = _draw(clean, n_denoised, rng, set())
        taken = {r["doc_id"] for r in chosen}
        from_raw = _draw(retrieved, n_neg - len(chosen), rng, taken)
        taken |= {r["doc_id"] for r in from_raw}
        if len(chosen) + len(from_raw) < n_neg:  # top up from the clean pool before giving up
            chosen += _draw(clean, n_neg - len(chosen) - len(from_raw), rng, taken)
        for r in chosen:
            rows.append((qid, r["doc_id"], 0, f"denoised:{r['source']}", float(r["ce_score"])))
        for r in from_raw:
            rows.append((qid, r["doc_id"], 0, f"raw:{r['source']}", float(r["ce_score"])))
        missing = n_neg - len(chosen) - len(from_raw)
        if missing > 0:
            short[qid] = missing
    candidates = pl.DataFrame(rows, schema={"query_id": pl.Utf8, "doc_id": pl.Utf8, "label": pl.Int32,
                                            "source": pl.Utf8, "ce_score": pl.Float64}, orient="row")
    stats = {"queries": candidates["query_id"].n_unique() if candidates.height else 0,
             "short_lists": len(short), "missing_negatives": int(sum(short.values())),
             "short_examples": dict(list(short.items())[:10])}
    return candidates, stats


def denoise_stats(decided: pl.DataFrame) -> dict:
    """Counts and shares of each decision among retrieved (non-positive) candidates, per source."""
    retrieved = decided.filter(pl.col("decision") != "positive")
    total = retrieved.height
    out: dict = {"retrieved": total}
    for decision in DECISIONS:
        count = retrieved.filter(pl.col("decision") == decision).height
        out[decision] = count
        out[f"{decision}_share"] = round(count / total, 4) if total else 0.0
    for source in ("bm25", "dense"):
        part = retrieved.filter(pl.col("source").str.contains(source))
        flagged = part.filter(pl.col("decision") != "negative").height
        out[f"{source}_flagged"] = flagged
        out[f"{source}_candidates"] = part.height
    return out


def _draw(pool: list[dict], n: int, rng: np.random.Generator, exclude: set[str]) -> list[dict]:
    """``n`` rows of ``pool`` whose doc is not in ``exclude``, drawn uniformly, in list order."""
    return sample_without_replacement([r for r in pool if r["doc_id"] not in exclude], n, rng,
                                      pool_order=True)
