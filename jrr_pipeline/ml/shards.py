"""FAISS indexes in shards: built one corpus slice at a time, searched together.

A sharded index folder holds ``shard-00000.faiss``, ``shard-00001.faiss``, ... (one FAISS index per
slice of the corpus, in corpus order), ``doc_ids.json`` (row -> doc id over all shards) and
``meta.json`` (factory, metric, dim, ntotal and the shard list), written last and atomically with
the folder. ``jrr_pipeline.ml.index.load_index`` reads both layouts.

Building holds one slice's vectors and one shard in memory at a time. Indexes that need training
(IVF, PQ) are trained once (on an explicit sample, or on the first slice) and every shard starts
from a copy of that trained, empty index, so all shards share one coarse quantizer and codebook.
Loading puts the shards under ``faiss.IndexShards`` (ids offset shard by shard, results merged by
score), which any code that searches a FAISS index uses unchanged; efSearch / nprobe are saved
with each shard; ``mmap=True`` maps IVF lists from disk instead of reading them into memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from jrr_pipeline.ml.index import (
    _FACTORIES,
    _METRICS,
    DOC_IDS_FILE,
    FORMAT_VERSION,
    META_FILE,
    _as_matrix,
    _skip_polysemous_training,
    set_search_params,
)
from jrr_pipeline.ml.io import atomic_directory
from jrr_pipeline.ml.modeling.base import read_json, write_json

SHARD_FILE = "shard-{:05d}.faiss"


class ShardWriter:
    """Writes shards into an empty ``folder``: ``add`` one slice at a time, then ``close``."""

    def __init__(self, folder: Path, dim: int, factory: str = "Flat", metric: str = "ip",
                 train_size: int | None = None, hnsw_ef_search: int = 128,
                 nprobe: int = 16) -> None:
        if metric not in _METRICS:
            raise ValueError(f"ShardWriter: metric must be one of {sorted(_METRICS)}, "
                             f"got {metric!r}")
        self.folder, self.factory, self.metric = Path(folder), factory, metric
        self.train_size = train_size
        self.search_params = {"hnsw_ef_search": hnsw_ef_search, "nprobe": nprobe}
        try:
            self.template = faiss.index_factory(dim, factory, _METRICS[metric])
        except RuntimeError as err:
            raise ValueError(f"ShardWriter: invalid FAISS factory string {factory!r}") from err
        _skip_polysemous_training(self.template)
        self.shards: list[dict] = []
        self.doc_ids: list[str] = []
        self.meta: dict = {}

    @property
    def dim(self) -> int:
        return int(self.template.d)

    def train(self, sample: np.ndarray) -> None:
        """Train the shared quantizer / codebooks on ``sample`` (``train_size`` rows of it,
        drawn deterministically); a no-op for indexes that need no training."""
        if self.template.is_trained:
            return
        x = _as_matrix(sample, "sample")
        if self.train_size is not None and self.train_size < len(x):
            rows = np.random.default_rng(0).choice(len(x), size=self.train_size, replace=False)
            x = x[np.sort(rows)]
        self.template.train(x)

    def add(self, embeddings: np.ndarray, doc_ids: list[str]) -> None:
        """Index one slice as the next shard and write it to disk."""
        x = _as_matrix(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise ValueError(f"shard {len(self.shards)}: vectors of dim {x.shape[1]}, the index "
                             f"has {self.dim}")
        if len(doc_ids) != len(x):
            raise ValueError(f"shard {len(self.shards)}: {len(doc_ids)} doc ids for "
                             f"{len(x)} vectors")
        if not self.template.is_trained:
            self.train(x)
        shard = faiss.clone_index(self.template)
        shard.add(x)
        set_search_params(shard, **self.search_params)  # saved with the shard
        name = SHARD_FILE.format(len(self.shards))
        faiss.write_index(shard, str(self.folder / name))
        self.shards.append({"file": name, "ntotal": int(shard.ntotal)})
        self.doc_ids.extend(str(d) for d in doc_ids)

    def close(self) -> dict:
        """Write ``doc_ids.json`` and, last, ``meta.json``; returns the meta."""
        if not self.shards:
            raise ValueError("ShardWriter: no shard was added")
        meta = {"format_version": FORMAT_VERSION, "factory": self.factory, "metric": self.metric,
                "dim": self.dim, "ntotal": len(self.doc_ids), "shards": self.shards}
        write_json(self.folder / DOC_IDS_FILE, self.doc_ids)
        write_json(self.folder / META_FILE, meta)
        self.meta = meta
        return meta


@contextmanager
def sharded_index_writer(directory: str | Path, dim: int, factory: str = "Flat",
                         metric: str = "ip", **options) -> Iterator[ShardWriter]:
    """A ``ShardWriter`` (``options``: train_size, hnsw_ef_search, nprobe) whose folder replaces
    ``directory`` atomically once the block ends without an error; the previous index stays
    otherwise."""
    with atomic_directory(directory) as tmp:
        writer = ShardWriter(tmp, dim, factory, metric, **options)
        yield writer
        writer.close()


def build_sharded_index(directory: str | Path, slices: Iterable[tuple[np.ndarray, list[str]]],
                        factory: str = "Flat", metric: str = "ip",
                        train_sample: np.ndarray | None = None, **options) -> dict:
    """Write a sharded index of ``slices`` ((vectors, doc ids) per shard, consumed one at a time)
    to ``directory``; IVF / PQ train on ``train_sample`` if given, else on the first slice.
    Returns the meta."""
    iterator = iter(slices)
    first = next(iterator, None)
    if first is None:
        raise ValueError("build_sharded_index: no slices")
    dim = _as_matrix(first[0], "embeddings").shape[1]
    with sharded_index_writer(directory, dim, factory, metric, **options) as writer:
        if train_sample is not None:
            writer.train(train_sample)
        writer.add(*first)
        for vectors, ids in iterator:
            writer.add(vectors, ids)
    return writer.meta


def is_sharded(meta: object) -> bool:
    return isinstance(meta, dict) and isinstance(meta.get("shards"), list)


def load_sharded_index(directory: str | Path, mmap: bool = False) -> tuple[faiss.Index, list[str]]:
    """The shards of ``directory`` under one ``faiss.IndexShards`` (threaded, successive ids)
    and the row -> doc id list; errors name the missing or inconsistent file."""
    root = Path(directory)
    meta_path, ids_path = root / META_FILE, root / DOC_IDS_FILE
    meta = read_json(meta_path)
    if not is_sharded(meta) or not meta["shards"]:
        raise ValueError(f"{meta_path}: field 'shards': missing or empty")
    doc_ids = read_json(ids_path)
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
        raise ValueError(f"{ids_path}: expected a JSON list of strings")
    combined = faiss.IndexShards(int(meta["dim"]), True, True)
    flags = faiss.IO_FLAG_MMAP if mmap else 0
    for entry in meta["shards"]:
        path = root / str(entry.get("file", ""))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard file not found (listed in {meta_path})")
        try:
            shard = faiss.read_index(str(path), flags)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a readable FAISS index") from err
        if shard.ntotal != entry.get("ntotal") or shard.d != meta["dim"]:
            raise ValueError(f"{path}: holds {shard.ntotal} x {shard.d} vectors but {meta_path} "
                             f"says {entry.get('ntotal')} x {meta['dim']}")
        combined.add_shard(shard)  # the Python wrapper keeps a reference to each shard
    if combined.ntotal != meta.get("ntotal") or len(doc_ids) != combined.ntotal:
        raise ValueError(f"{root}: shards hold {combined.ntotal} vectors, {meta_path} says "
                         f"{meta.get('ntotal')}, {ids_path} has {len(doc_ids)} ids")
    if isinstance(meta.get("factory"), str):
        _FACTORIES[combined] = meta["factory"]
    return combined, doc_ids


def corpus_slices(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous [start, end) row ranges covering ``n`` rows, sizes differing by at
    most one (fewer when ``n < shards``)."""
    if shards < 1:
        raise ValueError(f"corpus_slices: shards must be >= 1, got {shards}")
    bounds = np.linspace(0, n, min(shards, max(n, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
