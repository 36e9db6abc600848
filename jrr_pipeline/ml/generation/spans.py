"""Candidate spans of a document for the extractive query policy, and the copy / length
statistics the game's penalty and the ``generated_queries`` checks read.

A span is a run of 1..``max_words`` consecutive words of the document that neither starts nor
ends with a stopword; spans are kept in document order, the first occurrence of each text once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

_WORD = re.compile(r"\w[\w'\-]*\w|\w")


@cache
def stopwords() -> frozenset[str]:
    """English stopwords (bm25s's extended list)."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of the document, covering words [first_word, first_word + n)."""

    start: int
    end: int
    first_word: int
    n_words: int
    text: str


def words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) for every word of ``text``."""
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def candidate_spans(text: str, max_words: int = 3, max_chars: int | None = None,
                    limit: int = 256) -> list[Span]:
    """Spans of 1..``max_words`` words inside the first ``max_chars`` characters (what the
    encoder sees), at most ``limit``, in document order."""
    if max_words < 1:
        raise ValueError(f"candidate_spans: max_words must be >= 1, got {max_words}")
    stop = stopwords()
    found = [w for w in words(text) if max_chars is None or w[1] <= max_chars]
    seen: set[str] = set()
    spans: list[Span] = []
    for i, (start, _, first) in enumerate(found):
        if first.lower() in stop:
            continue
        for n in range(1, max_words + 1):
            if i + n > len(found):
                break
            last = found[i + n - 1]
            if last[2].lower() in stop:
                continue
            span_text = text[start:last[1]]
            key = span_text.lower()
            if key in seen:
                continue
            seen.add(key)
            spans.append(Span(start, last[1], i, n, span_text))
            if len(spans) >= limit:
                return spans
    return spans


def lowered_words(text: str) -> list[str]:
    return [w.lower() for _, _, w in words(text)]


def longest_copy(query: str, document: str) -> int:
    """Length in words of the longest run of the query's words that appears verbatim (case
    folded) in the document."""
    q, d = lowered_words(query), lowered_words(document)
    if not q or not d:
        return 0
    best = 0
    previous = [0] * (len(d) + 1)
    for qw in q:
        current = [0] * (len(d) + 1)
        for j, dw in enumerate(d, start=1):
            if qw == dw:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def diversity(queries: list[str]) -> dict[str, float]:
    """Distinct 1- and 2-gram ratios and the exact-duplicate rate (case folded) of ``queries``."""
    grams: dict[int, list[tuple[str, ...]]] = {1: [], 2: []}
    for query in queries:
        tokens = lowered_words(query)
        for n in grams:
            grams[n] += [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    folded = [" ".join(lowered_words(q)) for q in queries]
    return {
        "distinct_1": len(set(grams[1])) / max(len(grams[1]), 1),
        "distinct_2": len(set(grams[2])) / max(len(grams[2]), 1),
        "duplicate_rate": 1.0 - len(set(folded)) / max(len(folded), 1),
    }
