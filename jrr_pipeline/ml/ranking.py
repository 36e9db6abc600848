"""One deterministic order for every run: by score, ties by a prior order, then by doc id.

Evaluators break score ties their own way (pytrec_eval by doc id descending, ir-measures' msmarco
provider by run order), so the same run could rank a tied document differently per measure. We
therefore hand every evaluator a run whose scores are its ranks (``rank_scores``): a strictly
decreasing function of the position, with no ties left to break.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]


def order(scores: Mapping[str, float], prior: Sequence[str] = ()) -> list[str]:
    """Doc ids by score, highest first; ties by position in ``prior`` (ids missing from it come
    after those in it), then by doc id."""
    position = {doc: i for i, doc in enumerate(prior)}
    for doc, score in scores.items():
        if math.isnan(score):
            raise ValueError(f"order: document {doc!r} has a NaN score")
    return sorted(scores, key=lambda doc: (-scores[doc], position.get(doc, len(position)), doc))


def rank_scores(ordered: Sequence[str]) -> dict[str, float]:
    """{doc id: n - i} for the i-th of ``n`` documents: the order as strictly decreasing scores."""
    if len(set(ordered)) != len(ordered):
        raise ValueError("rank_scores: a document occurs twice in the order")
    n = len(ordered)
    return {doc: float(n - i) for i, doc in enumerate(ordered)}


def ranked_run(run: Run, prior: Run | None = None) -> dict[str, dict[str, float]]:
    """``run`` with every query's scores replaced by rank scores; score ties are broken by the
    query's order in ``prior`` (e.g. the first stage of a reranked run; itself ordered by score,
    then doc id) and then by doc id."""
    prior = prior or {}
    return {
        str(qid): rank_scores(order(docs, order(prior[qid]) if qid in prior else ()))
        for qid, docs in run.items()
    }
