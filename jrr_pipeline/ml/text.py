"""The text a model sees: "title text" for a corpus passage, the query text for a query id."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

# What str.strip() removes (str.isspace()). polars' strip_chars() without an argument keeps
# \x1c-\x1f, so passage_texts names the set and gives exactly passage_text's strings.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def passage_text(title: str | None, text: str | None) -> str:
    """ "title text" with the ends stripped; a missing or empty title (or text) is left out."""
    return f"{title or ''} {text or ''}".strip()


def passage_texts(corpus: pl.DataFrame) -> list[str]:
    """``passage_text`` of every corpus row, in row order (no ``title`` column: no titles)."""
    if "text" not in corpus.columns:
        raise ValueError(f"corpus: missing column 'text' (has {', '.join(corpus.columns)})")
    text = pl.col("text").cast(pl.Utf8).fill_null("")
    title = pl.col("title").cast(pl.Utf8).fill_null("") if "title" in corpus.columns else pl.lit("")
    joined = pl.concat_str([title, text], separator=" ").str.strip_chars(WHITESPACE)
    return corpus.select(joined.alias("passage"))["passage"].to_list()


def text_by_id(frame: pl.DataFrame, id_column: str = "query_id") -> dict[str, str]:
    """``{id: text}`` of a queries (or corpus) frame."""
    return dict(zip(frame[id_column].to_list(), frame["text"].to_list(), strict=True))


def query_texts(queries: pl.DataFrame, query_ids: Sequence[str]) -> list[str]:
    """The text of each of ``query_ids`` (in that order); KeyError for an unknown id."""
    lookup = text_by_id(queries)
    return [lookup[q] for q in query_ids]
