"""Sharded FAISS indexes: built slice by slice, searched together, saved and loaded atomically."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest

from jrr_pipeline.ml.index import build_index, load_index, save_index, search
from jrr_pipeline.ml.shards import (
    ShardWriter,
    build_sharded_index,
    corpus_slices,
    load_sharded_index,
    sharded_index_writer,
)


def _vectors(n: int, d: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, d))
    x = centers[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _slices(x: np.ndarray, ids: list[str], shards: int):
    for start, end in corpus_slices(len(x), shards):
        yield x[start:end], ids[start:end]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = _vectors(4001)
    rng = np.random.default_rng(1)
    queries = x[rng.choice(len(x), 64, replace=False)] + 0.05 * rng.normal(size=(64, x.shape[1]))
    return x, queries.astype(np.float32), [f"doc{i}" for i in range(len(x))]


def test_sharded_flat_gives_the_top_k_of_one_flat_index(data, tmp_path: Path) -> None:
    """Same ids and the same scores, for slices of unequal size, after a save/load round trip."""
    x, queries, ids = data
    one = tmp_path / "one"
    save_index(build_index(x, "Flat"), ids, one)
    sharded = tmp_path / "sharded"
    meta = build_sharded_index(sharded, _slices(x, ids, 3), "Flat")
    assert [s["ntotal"] for s in meta["shards"]] == [1334, 1333, 1334]
    assert sorted(p.name for p in sharded.iterdir()) == [
        "doc_ids.json", "meta.json", "shard-00000.faiss", "shard-00001.faiss",
        "shard-00002.faiss"]
    flat, flat_ids = load_index(one)
    shards, shard_ids = load_index(sharded)  # the same loader reads both layouts
    assert isinstance(shards, faiss.IndexShards) and shards.ntotal == len(x) == flat.ntotal
    assert shard_ids == flat_ids
    for k in (1, 10, 100):
        want_ids, want_scores = search(flat, flat_ids, queries, k)
        got_ids, got_scores = search(shards, shard_ids, queries, k)
        assert got_ids == want_ids
        np.testing.assert_array_equal(got_scores, want_scores)
    # hits fall in every shard, so the merge across shards was exercised
    top = search(shards, shard_ids, queries, 100)[0]
    hit_rows = {int(d.removeprefix("doc")) for row in top for d in row}
    assert all(any(a <= r < b for r in hit_rows) for a, b in corpus_slices(len(x), 3))


def test_sharded_ivf_shares_one_quantizer_and_keeps_nprobe(data, tmp_path: Path) -> None:
    x, queries, ids = data
    meta = build_sharded_index(tmp_path / "ivf", _slices(x, ids, 4), "IVF32,Flat",
                               train_sample=x[::2], nprobe=8)
    assert meta["factory"] == "IVF32,Flat" and len(meta["shards"]) == 4
    index, doc_ids = load_sharded_index(tmp_path / "ivf", mmap=True)
    ivfs = [faiss.extract_index_ivf(index.at(i)) for i in range(index.count())]
    centroids = [ivf.quantizer.reconstruct_n(0, ivf.nlist) for ivf in ivfs]
    assert all(np.array_equal(c, centroids[0]) for c in centroids)
    assert {ivf.nprobe for ivf in ivfs} == {8}
    exact, _ = search(build_index(x, "Flat"), ids, queries, 10)
    found, _ = search(index, doc_ids, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found, strict=True)])
    assert recall > 0.9, recall


def test_a_failed_build_keeps_the_previous_index(data, tmp_path: Path) -> None:
    x, _, ids = data
    target = tmp_path / "idx"
    build_sharded_index(target, _slices(x[:100], ids[:100], 2), "Flat")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ValueError, match="shard 1: 3 doc ids for 50 vectors"), \
            sharded_index_writer(target, x.shape[1]) as writer:
        writer.add(x[:50], ids[:50])
        writer.add(x[50:100], ids[:3])
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folder left


def test_missing_or_inconsistent_shards_are_named(data, tmp_path: Path) -> None:
    x, _, ids = data
    target = tmp_path / "idx"
    build_sharded_index(target, _slices(x[:90], ids[:90], 3), "Flat")
    good = (target / "meta.json").read_text()
    meta = json.loads(good)
    meta["shards"][1]["ntotal"] = 31
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shard-00001.faiss: holds 30 x 384 vectors"):
        load_index(target)
    (target / "meta.json").write_text(good)
    (target / "shard-00002.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00002.faiss: shard file not found"):
        load_index(target)
    with pytest.raises(ValueError, match="no shard was added"):
        ShardWriter(tmp_path, 8).close()


def test_corpus_slices_cover_every_row_once() -> None:
    assert corpus_slices(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert corpus_slices(2, 4) == [(0, 1), (1, 2)]
    assert corpus_slices(5, 1) == [(0, 5)]
    with pytest.raises(ValueError):
        corpus_slices(5, 0)


def test_the_shard_count_grows_with_the_corpus_past_the_cap() -> None:
    from jrr_pipeline.ml.settings import FaissIndexSettings

    capped = FaissIndexSettings(max_shard_vectors=250_000)
    assert [capped.shard_count(n) for n in (5_183, 250_000, 250_001, 1_000_000)] == [1, 1, 2, 4]
    assert FaissIndexSettings(shards=3, max_shard_vectors=250_000).shard_count(1_000) == 3
    assert FaissIndexSettings(shards=2, max_shard_vectors=0).shard_count(10**7) == 2


def test_the_asset_builds_shards_from_corpus_slices(tiny_model_dir: Path, tmp_path: Path) -> None:
    """faiss_index over 20 passages capped at 7 vectors a shard: 3 shards, encoded slice by
    slice, the same top-k as one index."""
    from jrr_pipeline.assets.serving import build_shards
    from jrr_pipeline.ml.index import encode_corpus
    from jrr_pipeline.ml.modeling import DenseRetriever
    from jrr_pipeline.ml.settings import FaissIndexSettings

    corpus = pl.DataFrame({"doc_id": [f"d{i}" for i in range(20)],
                           "title": [f"title {i}" for i in range(20)],
                           "text": [f"passage number {i} about topic {i % 4}" for i in range(20)]})
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir))
    config = FaissIndexSettings(batch_size=4, max_shard_vectors=7)
    (tmp_path / "idx").mkdir()  # the asset writes into its artifact staging folder
    dim, _ = build_shards(tmp_path / "idx", retriever, corpus, config,
                          config.shard_count(corpus.height), None)
    index, doc_ids = load_index(tmp_path / "idx")
    assert dim == index.d and index.count() == 3 and doc_ids == corpus["doc_id"].to_list()
    vectors = encode_corpus(retriever, corpus, batch_size=4, progress=False)
    queries = vectors[:5]
    assert search(index, doc_ids, queries, 7)[0] == \
        search(build_index(vectors), doc_ids, queries, 7)[0]
