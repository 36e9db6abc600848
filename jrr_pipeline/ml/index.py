"""Encode a corpus with the retriever and build, save, load and search FAISS indexes.

Indexes are described by FAISS ``index_factory`` strings ("Flat", "HNSW32", "IVF256,PQ32", ...).
A saved index is a folder with ``index.faiss``, ``doc_ids.json`` (row -> doc id) and
``meta.json`` (factory, metric, dim, ntotal), written atomically; ``load_index`` also reads the
sharded folders of ``jrr_pipeline.ml.shards``.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import polars as pl

from jrr_pipeline.ml.io import atomic_directory
from jrr_pipeline.ml.modeling.base import read_json, write_json
from jrr_pipeline.ml.text import passage_texts

if TYPE_CHECKING:
    from jrr_pipeline.ml.modeling.retriever import DenseRetriever

INDEX_FILE = "index.faiss"
DOC_IDS_FILE = "doc_ids.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_GPU_MODES = ("auto", "always", "never")
# FAISS objects cannot carry new attributes, so the factory string of each index we build or
# load is remembered here for meta.json.
_FACTORIES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def encode_corpus(
    retriever: DenseRetriever,
    corpus: pl.DataFrame,
    batch_size: int = 64,
    progress: bool = True,
    autocast_dtype: Any = None,
) -> np.ndarray:
    """float32 [N, H] passage embeddings of ``corpus`` rows (title + " " + text), in row order."""
    return retriever.embed(
        passage_texts(corpus),
        kind="passage",
        batch_size=batch_size,
        progress=progress,
        autocast_dtype=autocast_dtype,
    )


def gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus and get_num_gpus() > 0)


def build_index(
    embeddings: np.ndarray,
    factory: str = "Flat",
    metric: str = "ip",
    train_size: int | None = None,
    hnsw_ef_search: int = 128,
    nprobe: int = 16,
    use_gpu: str = "auto",
) -> faiss.Index:
    """Build a FAISS index over ``embeddings`` [N, D] from an ``index_factory`` string.

    ``metric``: "ip" (inner product; cosine for normalised vectors) or "l2". Indexes that need
    training (IVF, PQ) train on ``train_size`` rows drawn deterministically (all rows if None).
    ``use_gpu``: "auto" (GPU when ``gpu_available()`` and FAISS has a GPU version of the index
    type), "always" or "never"; ``save_index`` moves a GPU index back to the CPU.
    """
    if metric not in _METRICS:
        raise ValueError(f"build_index: metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if use_gpu not in _GPU_MODES:
        raise ValueError(f"build_index: use_gpu must be one of {_GPU_MODES}, got {use_gpu!r}")
    x = _as_matrix(embeddings, "embeddings")
    try:
        index = faiss.index_factory(x.shape[1], factory, _METRICS[metric])
    except RuntimeError as err:
        raise ValueError(f"build_index: invalid FAISS factory string {factory!r}") from err
    _skip_polysemous_training(index)
    if use_gpu == "always" and not gpu_available():
        raise RuntimeError("build_index: use_gpu='always' but FAISS sees no GPU")
    if use_gpu != "never" and gpu_available():
        try:
            index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError:
            if use_gpu == "always":
                raise
            # "auto": index types without a GPU version (e.g. HNSW) stay on the CPU
    if not index.is_trained:
        sample = x
        if train_size is not None and train_size < len(x):
            rows = np.random.default_rng(0).choice(len(x), size=train_size, replace=False)
            sample = x[np.sort(rows)]
        index.train(sample)
    index.add(x)
    _FACTORIES[index] = factory
    set_search_params(index, hnsw_ef_search=hnsw_ef_search, nprobe=nprobe)
    return index


def set_search_params(index: faiss.Index, hnsw_ef_search: int = 128, nprobe: int = 16) -> None:
    """Set efSearch (HNSW) and nprobe (IVF) wherever they occur in ``index`` (also nested, e.g.
    an IVF whose quantizer is HNSW); parameters an index does not have are skipped."""
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    for name, value in (("efSearch", hnsw_ef_search), ("nprobe", nprobe)):
        with contextlib.suppress(RuntimeError):  # FAISS raises when the index lacks it
            space.set_index_parameter(index, name, value)


def save_index(index: faiss.Index, doc_ids: list[str], directory: str | Path) -> None:
    """Atomically write ``index`` and its row -> doc id map to ``directory``."""
    if len(doc_ids) != index.ntotal:
        raise ValueError(f"save_index: {len(doc_ids)} doc ids for an index of {index.ntotal} rows")
    cpu_index = faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index
    with atomic_directory(directory) as tmp:
        faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
        write_json(tmp / DOC_IDS_FILE, [str(d) for d in doc_ids])
        write_json(
            tmp / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "factory": _FACTORIES.get(index) or type(faiss.downcast_index(cpu_index)).__name__,
                "metric": "ip" if cpu_index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
                "dim": int(cpu_index.d),
                "ntotal": int(cpu_index.ntotal),
            },
        )


def load_index(directory: str | Path) -> tuple[faiss.Index, list[str]]:
    """Read a folder written by ``save_index``; errors name the missing, corrupt or
    inconsistent file."""
    root = Path(directory)
    meta_path, ids_path, index_path = root / META_FILE, root / DOC_IDS_FILE, root / INDEX_FILE
    meta = read_json(meta_path)
    if isinstance(meta, dict) and isinstance(meta.get("shards"), list):  # ml/shards.py's layout
        from jrr_pipeline.ml.shards import load_sharded_index

        return load_sharded_index(root)
    for field in ("dim", "ntotal"):
        if not isinstance(meta, dict) or not isinstance(meta.get(field), int):
            raise ValueError(f"{meta_path}: field '{field}': missing or not an integer")
    doc_ids = read_json(ids_path)
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
        raise ValueError(f"{ids_path}: expected a JSON list of strings")
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: file not found")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise ValueError(f"{index_path}: not a readable FAISS index ({first})") from err
    if index.ntotal != meta["ntotal"] or index.d != meta["dim"]:
        raise ValueError(
            f"{index_path}: holds {index.ntotal} x {index.d} vectors but {meta_path} says "
            f"{meta['ntotal']} x {meta['dim']}"
        )
    if len(doc_ids) != index.ntotal:
        raise ValueError(f"{ids_path}: {len(doc_ids)} doc ids for {index.ntotal} index rows")
    if isinstance(meta.get("factory"), str):
        _FACTORIES[index] = meta["factory"]
    return index, doc_ids


def search(
    index: faiss.Index, doc_ids: list[str], query_embeddings: np.ndarray, k: int
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Top-``k`` doc ids per query and, aligned with them, float32 scores per query: ``ids[i]``
    and ``scores[i]`` have the same length, at most min(k, ntotal).

    Hits FAISS could not fill (id -1, possible with HNSW/IVF: a query whose probed lists hold
    fewer than k vectors) are dropped from both, so a query may get fewer than k.
    """
    if k < 1:
        raise ValueError(f"search: k must be >= 1, got {k}")
    q = _as_matrix(query_embeddings, "query_embeddings")
    if q.shape[1] != index.d:
        raise ValueError(f"search: queries have dim {q.shape[1]}, the index has {index.d}")
    k = min(k, int(index.ntotal))
    if k == 0:
        return [[] for _ in range(len(q))], [np.zeros(0, dtype=np.float32) for _ in range(len(q))]
    scores, rows = index.search(q, k)
    found = rows >= 0
    ids = [[doc_ids[r] for r in row[keep]] for row, keep in zip(rows, found, strict=True)]
    kept = [row[keep].astype(np.float32, copy=False)
            for row, keep in zip(scores, found, strict=True)]
    return ids, kept


def _skip_polysemous_training(index: faiss.Index) -> None:
    """index_factory turns on polysemous training for PQ codes; it only serves Hamming-filtered
    search (which we do not use) and makes training ~15x slower."""
    current: Any = faiss.downcast_index(index)
    while current is not None:
        if hasattr(current, "do_polysemous_training"):
            current.do_polysemous_training = False
        inner = getattr(current, "index", None) or getattr(current, "base_index", None)
        current = faiss.downcast_index(inner) if inner is not None else None


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name}: expected a 2-D array [N, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__
