from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
import torch

from jrr_pipeline.ml import index as index_module
from jrr_pipeline.ml.evaluation import evaluate
from jrr_pipeline.ml.index import (
    build_index,
    encode_corpus,
    gpu_available,
    load_index,
    save_index,
    search,
)
from jrr_pipeline.ml.sparse import run_from_search
from jrr_pipeline.ml.text import passage_texts


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


def _clustered(n: int = 3000, d: int = 16, clusters: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _queries(x: np.ndarray, n: int = 100, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)] + 0.1 * rng.normal(size=(n, x.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _recall(reference: list[list[str]], found: list[list[str]]) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference, found, strict=True)])
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = _clustered()
    return x, _queries(x), [f"doc{i}" for i in range(len(x))]


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    x, q, ids = data
    index = build_index(x, "Flat", metric="ip")
    found, scores = search(index, ids, q, k=10)
    brute = q @ x.T
    top = np.argsort(-brute, axis=1)[:, :10]
    assert found == [[ids[j] for j in row] for row in top]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, top, axis=1), rtol=1e-5)
    assert len(scores) == 100 and all(r.dtype == np.float32 and r.shape == (10,) for r in scores)

    l2 = build_index(x, "Flat", metric="l2")
    found_l2, d2 = search(l2, ids, q[:5], k=3)
    dist = ((q[:5, None, :] - x[None]) ** 2).sum(-1)
    assert found_l2 == [[ids[j] for j in row] for row in np.argsort(dist, axis=1)[:, :3]]


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [("HNSW32", {"hnsw_ef_search": 64}), ("IVF32,PQ16", {"nprobe": 16, "train_size": 2000})],
)
def test_approximate_indexes_recall_vs_flat(
    data: tuple[np.ndarray, np.ndarray, list[str]], factory: str, kwargs: dict
) -> None:
    x, q, ids = data
    exact, _ = search(build_index(x, "Flat"), ids, q, k=10)
    approx_index = build_index(x, factory, **kwargs)
    assert approx_index.ntotal == len(x)
    approx, _ = search(approx_index, ids, q, k=10)
    assert _recall(exact, approx) >= 0.9


def test_search_params_are_applied(data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    x, _, _ = data
    hnsw = build_index(x[:500], "HNSW16", hnsw_ef_search=77)
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 77
    ivf = build_index(x[:500], "IVF8,Flat", nprobe=3)
    assert faiss.extract_index_ivf(ivf).nprobe == 3


def test_unfilled_results_are_dropped_with_their_scores() -> None:
    """FAISS pads what an IVF probe cannot fill with id -1: ids and scores stay aligned."""
    x = _clustered(n=200, clusters=4)
    ids = [str(i) for i in range(200)]
    index = build_index(x, "IVF16,Flat", nprobe=1)  # one list of ~12 rows cannot fill k=50
    found, scores = search(index, ids, x[:3], k=50)
    brute = x[:3] @ x.T
    for q, (row, row_scores) in enumerate(zip(found, scores, strict=True)):
        assert 0 < len(row) == len(row_scores) < 50
        assert np.isfinite(row_scores).all() and (np.diff(row_scores) <= 1e-6).all()
        np.testing.assert_allclose(row_scores, brute[q, [int(d) for d in row]], rtol=1e-5)
    found_all, scores_all = search(build_index(x, "Flat"), ids, x[:2], k=500)
    assert [len(r) for r in scores_all] == [200, 200] and len(found_all[0]) == 200


def test_ivf_run_with_short_lists_evaluates() -> None:
    """Fewer than k hits for some queries (IVF8,Flat, nprobe 1): the run is built and scored."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(300)]
    q = x[:20] + 0.001 * rng.normal(size=(20, 8)).astype(np.float32)
    found, scores = search(build_index(x, "IVF8,Flat", nprobe=1), ids, q, k=100)
    assert any(len(row) < 100 for row in found)
    qids = [f"q{i}" for i in range(20)]
    run = run_from_search(qids, found, scores)
    assert all(len(run[qid]) == len(row) for qid, row in zip(qids, found, strict=True))
    # each query's own (perturbed) vector is its nearest neighbour, inside its own probed list
    got = evaluate(run, {f"q{i}": {f"d{i}": 1} for i in range(20)}, ["RR@10", "R@100"])
    assert got == {"RR@10": 1.0, "R@100": 1.0}


def test_bad_inputs_are_rejected(data: tuple[np.ndarray, np.ndarray, list[str]]) -> None:
    x, q, ids = data
    with pytest.raises(ValueError, match="metric"):
        build_index(x, "Flat", metric="cosine")
    with pytest.raises(ValueError, match="IVFoops"):
        build_index(x, "IVFoops,Flat")
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_index(bad, "Flat")
    with pytest.raises(ValueError, match="dim"):
        search(build_index(x, "Flat"), ids, q[:, :8], k=5)
    with pytest.raises(ValueError, match="doc ids"):
        save_index(build_index(x[:10], "Flat"), ids[:9], Path("/nonexistent/never-written"))
    if not gpu_available():
        with pytest.raises(RuntimeError, match="GPU"):
            build_index(x, "Flat", use_gpu="always")


def test_save_load_roundtrip(
    data: tuple[np.ndarray, np.ndarray, list[str]], tmp_path: Path
) -> None:
    x, q, ids = data
    index = build_index(x, "HNSW32", hnsw_ef_search=64)
    before = search(index, ids, q, k=10)
    save_index(index, ids, tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["factory"] == "HNSW32" and meta["dim"] == 16 and meta["ntotal"] == len(x)
    loaded, loaded_ids = load_index(tmp_path / "idx")
    assert loaded_ids == ids
    after = search(loaded, loaded_ids, q, k=10)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])
    # re-saving a loaded index keeps its factory string
    save_index(loaded, loaded_ids, tmp_path / "idx2")
    assert json.loads((tmp_path / "idx2" / "meta.json").read_text())["factory"] == "HNSW32"


def test_corrupt_or_inconsistent_files_are_named(tmp_path: Path) -> None:
    x = _clustered(n=50)
    ids = [str(i) for i in range(50)]
    save_index(build_index(x, "Flat"), ids, tmp_path / "idx")
    index_file = tmp_path / "idx" / "index.faiss"
    good = index_file.read_bytes()

    index_file.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=r"index\.faiss"):
        load_index(tmp_path / "idx")
    index_file.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"index\.faiss"):
        load_index(tmp_path / "idx")
    index_file.write_bytes(good)

    (tmp_path / "idx" / "doc_ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(ValueError, match=r"doc_ids\.json: 49 doc ids for 50"):
        load_index(tmp_path / "idx")
    (tmp_path / "idx" / "doc_ids.json").write_text(json.dumps(ids))

    meta_file = tmp_path / "idx" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "dim": 8}))
    with pytest.raises(ValueError, match=r"meta\.json"):
        load_index(tmp_path / "idx")
    meta_file.write_text("{")
    with pytest.raises(ValueError, match=r"meta\.json:1"):
        load_index(tmp_path / "idx")
    meta_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        load_index(tmp_path / "idx")


def test_failed_save_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clustered(n=100)
    ids = [f"a{i}" for i in range(100)]
    save_index(build_index(x, "Flat"), ids, tmp_path / "idx")

    def crash(index: faiss.Index, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(index_module.faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        save_index(build_index(x[:50], "Flat"), ids[:50], tmp_path / "idx")
    monkeypatch.undo()
    loaded, loaded_ids = load_index(tmp_path / "idx")
    assert loaded.ntotal == 100 and loaded_ids == ids
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_encode_corpus_joins_title_and_text(tiny_model_dir: Path) -> None:
    from jrr_pipeline.ml.modeling import DenseRetriever

    torch.set_num_threads(1)
    corpus = pl.DataFrame(
        {
            "doc_id": ["d1", "d2", "d3"],
            "title": ["Vitamin D", None, ""],
            "text": ["reduces fractures", "cells divide", "only text here"],
        }
    )
    texts = passage_texts(corpus)
    assert texts == ["Vitamin D reduces fractures", "cells divide", "only text here"]
    retriever = DenseRetriever.from_pretrained(str(tiny_model_dir))
    emb = encode_corpus(retriever, corpus, batch_size=2, progress=False)
    np.testing.assert_allclose(emb, retriever.embed(texts, "passage"), atol=1e-6)
    index = build_index(emb, "Flat")
    found, _ = search(index, corpus["doc_id"].to_list(), emb[1:2], k=1)
    assert found == [["d2"]]
    assert passage_texts(corpus.drop("title")) == ["reduces fractures", "cells divide",
                                                   "only text here"]
