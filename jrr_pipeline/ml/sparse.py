"""BM25 first-stage retrieval (bm25s + PyStemmer): build, save/load, search, mine negatives.

The index stores BM25 weights eagerly (bm25s), so a query costs a few sparse row sums over the
corpus. Ties are broken by corpus order, which makes results reproducible across save/load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import polars as pl
import Stemmer
from tqdm.auto import tqdm

from jrr_pipeline.ml.io import atomic_directory, previous_versions
from jrr_pipeline.ml.settings import BM25IndexSettings
from jrr_pipeline.ml.text import passage_texts

CONFIG_FILE = "jrr_bm25.json"
DOC_IDS_FILE = "doc_ids.json"
FORMAT_VERSION = 1
NEGATIVES_SCHEMA = {
    "query_id": pl.Utf8,
    "doc_id": pl.Utf8,
    "rank": pl.Int32,
    "score": pl.Float64,
    "source": pl.Utf8,
}


class BM25IndexError(ValueError):
    """A saved BM25 index is corrupt or inconsistent; the message names the file."""


def _stemmer(config: BM25IndexSettings) -> Stemmer.Stemmer | None:
    return Stemmer.Stemmer(config.stemmer) if config.stemmer else None


def _tokenize(texts: Sequence[str], config: BM25IndexSettings, progress: bool, as_ids: bool) -> Any:
    return bm25s.tokenize(
        list(texts),
        stopwords=config.stopwords or None,
        stemmer=_stemmer(config),
        return_ids=as_ids,
        show_progress=progress,
    )


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best documents, by score then corpus order (deterministic)."""
    if k >= scores.shape[0]:
        idx = np.arange(scores.shape[0])
    else:
        threshold = scores[np.argpartition(-scores, k - 1)[:k]].min()
        above = np.flatnonzero(scores > threshold)
        ties = np.flatnonzero(scores == threshold)[: k - above.size]
        idx = np.concatenate([above, ties])
    order = np.lexsort((idx, -scores[idx]))
    idx = idx[order]
    return idx, scores[idx]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


class BM25Index:
    """A BM25 index over a corpus, addressed by external doc ids."""

    def __init__(self, bm25: bm25s.BM25, doc_ids: Sequence[str], config: BM25IndexSettings) -> None:
        self._bm25 = bm25
        self._doc_ids = np.asarray(list(doc_ids), dtype=object)
        self.config = config

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        return int(self._doc_ids.shape[0])

    @property
    def doc_ids(self) -> list[str]:
        """Indexed doc ids in corpus order."""
        return self._doc_ids.tolist()

    @classmethod
    def build(
        cls,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        config: BM25IndexSettings = BM25IndexSettings(),  # noqa: B008 (frozen: a safe shared default)
        progress: bool = False,
    ) -> BM25Index:
        """Tokenize, stem and index `texts`; `doc_ids[i]` names `texts[i]`."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"BM25Index.build: {len(doc_ids)} doc ids but {len(texts)} texts")
        if len(doc_ids) == 0:
            raise ValueError("BM25Index.build: empty corpus")
        seen: set[str] = set()
        for i, doc_id in enumerate(doc_ids):
            if doc_id in seen:
                raise ValueError(f"BM25Index.build: duplicate doc id {doc_id!r} at position {i}")
            seen.add(doc_id)
        tokens = _tokenize(texts, config, progress, as_ids=True)
        bm25 = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        bm25.index(tokens, show_progress=progress)
        return cls(bm25, [str(d) for d in doc_ids], config)

    def save(self, directory: str | Path) -> None:
        """Write the index to `directory` atomically (temp dir in the same parent, then swap)."""
        with atomic_directory(directory) as tmp:
            self._bm25.save(str(tmp), show_progress=False)
            _write_json(tmp / DOC_IDS_FILE, self.doc_ids)
            # Written last: its presence marks a complete index.
            meta = {
                "format_version": FORMAT_VERSION,
                "num_docs": self.num_docs,
                "bm25s_version": bm25s.__version__,
                "config": self.config.to_dict(),
            }
            _write_json(tmp / CONFIG_FILE, meta)

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
        """Load an index written by `save`; raises FileNotFoundError or BM25IndexError."""
        root = Path(directory)
        if not root.is_dir():
            # A crash between the two renames of a swap leaves only the previous index here.
            stale = previous_versions(root)
            hint = f" (a previous index survives at {stale[-1]})" if stale else ""
            raise FileNotFoundError(f"{root}: BM25 index directory not found{hint}")
        config_path = root / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: missing (incomplete or foreign BM25 index)")
        meta = _read_json(config_path)
        try:
            known = {f.name for f in fields(BM25IndexSettings)}
            config = BM25IndexSettings(**{k: v for k, v in meta["config"].items() if k in known})
            num_docs = int(meta["num_docs"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BM25IndexError(f"{config_path}: field 'config': invalid ({err})") from err
        doc_ids_path = root / DOC_IDS_FILE
        if not doc_ids_path.is_file():
            raise FileNotFoundError(f"{doc_ids_path}: missing")
        doc_ids = _read_json(doc_ids_path)
        if not isinstance(doc_ids, list) or len(doc_ids) != num_docs:
            raise BM25IndexError(f"{doc_ids_path}: expected a list of {num_docs} doc ids")
        try:
            bm25 = bm25s.BM25.load(str(root), show_progress=False)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise BM25IndexError(f"{root}: bm25s arrays unreadable ({err})") from err
        if bm25.scores.get("num_docs") != num_docs:
            raise BM25IndexError(
                f"{root}: bm25s index has {bm25.scores.get('num_docs')} docs, {doc_ids_path} has"
                f" {num_docs}"
            )
        return cls(bm25, [str(d) for d in doc_ids], config)

    def _score_one(self, token_ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self._bm25.get_scores_from_ids(token_ids)
        return _top_k(scores, k)

    def search(
        self, queries: Sequence[str], k: int, progress: bool = False, n_threads: int = 1
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k per query: doc ids [n][k'] and float32 scores [n, k'], k' = min(k, num_docs)."""
        if k < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        k_eff = min(k, self.num_docs)
        vocab = self._bm25.vocab_dict
        token_lists = _tokenize(queries, self.config, progress=False, as_ids=False)
        query_ids = [[vocab[t] for t in toks if t in vocab] for toks in token_lists]
        run = partial(self._score_one, k=k_eff)
        bar = dict(total=len(query_ids), disable=not progress, desc="BM25 search", unit="q")
        if n_threads <= 1:
            results = list(tqdm(map(run, query_ids), **bar))
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                results = list(tqdm(pool.map(run, query_ids, chunksize=16), **bar))
        scores = np.zeros((len(results), k_eff), dtype=np.float32)
        docs: list[list[str]] = []
        for row, (idx, sc) in enumerate(results):
            scores[row] = sc
            docs.append(self._doc_ids[idx].tolist())
        return docs, scores


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BM25IndexError(f"{path}: not valid JSON ({err})") from err


def corpus_texts(corpus: pl.DataFrame, include_title: bool = True) -> list[str]:
    """Texts to index: the models' passage text ("title text"), or without titles the text as is."""
    if include_title and "title" in corpus.columns:
        return passage_texts(corpus)
    if "text" not in corpus.columns:
        raise ValueError("corpus_texts: corpus frame has no 'text' column")
    return corpus["text"].fill_null("").to_list()


def run_from_search(
    query_ids: Sequence[str],
    doc_ids: Sequence[Sequence[str]],
    scores: np.ndarray | Sequence[Sequence[float]],
) -> dict[str, dict[str, float]]:
    """A run {query_id: {doc_id: score}} (the ir-measures format) from `search` output: a [Q, k]
    score matrix (BM25) or one score row per query as long as its doc list (FAISS)."""
    if not len(query_ids) == len(doc_ids) == len(scores):
        raise ValueError(
            f"run_from_search: {len(query_ids)} query ids, {len(doc_ids)} doc lists,"
            f" {len(scores)} score rows"
        )
    return {
        str(qid): {str(d): float(s) for d, s in zip(docs, row, strict=True)}
        for qid, docs, row in zip(query_ids, doc_ids, scores, strict=True)
    }


def mine_negatives(
    index: BM25Index,
    queries: pl.DataFrame,
    qrels: pl.DataFrame,
    k: int = 100,
    split: str = "train",
    progress: bool = False,
    n_threads: int = 1,
) -> pl.DataFrame:
    """BM25 negatives for every query of `split` in `qrels`: its top-k minus its positives.

    A positive is any qrels row (of any split) with relevance > 0 for that query. `rank` is the
    1-based rank in the original BM25 list, so ranks have gaps where positives were removed.
    """
    split_qids = (
        qrels.filter(pl.col("split") == split)
        .select(pl.col("query_id").cast(pl.Utf8))
        .unique()
        .sort("query_id")["query_id"]
        .to_list()
    )
    if not split_qids:
        return pl.DataFrame(schema=NEGATIVES_SCHEMA)
    texts = dict(zip(queries["query_id"].cast(pl.Utf8), queries["text"], strict=True))
    missing = [q for q in split_qids if q not in texts]
    if missing:
        raise ValueError(
            f"mine_negatives: {len(missing)} {split} qrels query ids missing from queries,"
            f" e.g. {missing[:5]}"
        )
    docs, scores = index.search([texts[q] for q in split_qids], k, progress, n_threads)
    k_eff = scores.shape[1]
    ranked = pl.DataFrame(
        {
            "query_id": np.repeat(np.asarray(split_qids, dtype=object), k_eff).tolist(),
            "doc_id": [d for row in docs for d in row],
            "rank": np.tile(np.arange(1, k_eff + 1, dtype=np.int32), len(split_qids)),
            "score": scores.astype(np.float64).ravel(),
        },
        schema={name: dt for name, dt in NEGATIVES_SCHEMA.items() if name != "source"},
    )
    positives = (
        qrels.filter(pl.col("relevance") > 0)
        .select(pl.col("query_id").cast(pl.Utf8), pl.col("doc_id").cast(pl.Utf8))
        .unique()
    )
    return (
        ranked.join(positives, on=["query_id", "doc_id"], how="anti")
        .with_columns(pl.lit("bm25", dtype=pl.Utf8).alias("source"))
        .sort(["query_id", "rank"])
    )
