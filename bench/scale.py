"""How cost grows with the corpus: FAISS indexes over synthetic 384-d vectors and BM25 over
synthetic documents, at 10k / 100k / 1M (or any --sizes).

FAISS, per size: build time, memory (bytes per vector of the index, and the peak resident memory
the build added), search throughput (1,000 queries, k=10, all threads) and recall@10 against
exact search, for

- Flat (exact; its top-10 is the reference),
- HNSW32 (efSearch 128),
- IVF-PQ (IVF{nlist}_HNSW32,PQ48: 48-byte codes, nprobe 16),
- sharded IVF (IVF{nlist}_HNSW32,Flat in 4 shards built one at a time, jrr_pipeline.ml.shards,
  searched together with faiss.IndexShards, nprobe 16),
- capped HNSW (HNSW32 graphs of at most `faiss_index.max_shard_vectors` vectors each, 250k by
  default: ceil(n / 250k) shards, searched together, efSearch 128): what the faiss_index asset
  builds for `factory=HNSW32`. One graph's construction grows as n^1.2 from 100k to 1M on 2 cores
  (its inserts slow as vectors and links outgrow the caches); capped graphs keep it near n,

with nlist = round(4 * sqrt(n)), trained on min(n, 40 * nlist) vectors (not rounded to a power of
two: that made nlist grow 4x from 100k to 1M instead of sqrt(10)x, and k-means, ~ nlist^2, 16x).
The coarse quantizer is an HNSW graph over the centroids: with a flat one, assigning n vectors to
sqrt(n) lists costs n^1.5.
Vectors: a Gaussian mixture in a 48-d latent space mapped to 384-d plus noise, L2-normalised
(real embeddings have a low intrinsic dimension; uniform random vectors would make every ANN
index look bad). Queries are fresh draws from the same distribution.

BM25, per size: jrr_pipeline.ml.sparse.BM25Index.build over synthetic documents (Zipfian words,
20-100 tokens each), its memory, and mine_negatives for 1,000 queries (top-100).

Results merge into bench/results/scale.json (sizes measured before are kept) and every size in it
is plotted log-log to bench/results/scale.png; the log prints a Markdown table and the growth
exponent between consecutive sizes (1.0 = linear; n log n from 100k to 1M is 1.08).

    .venv/bin/python bench/scale.py --sizes 10000,100000        # minutes
    .venv/bin/python bench/scale.py --sizes 1000000             # see README for time / memory
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores other work shares, a
# spinning team makes FAISS's k-means several times slower (26 s vs 9 s for PQ48 on 10k vectors).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from jrr_pipeline.ml.index import build_index  # noqa: E402
from jrr_pipeline.ml.settings import FaissIndexSettings  # noqa: E402
from jrr_pipeline.ml.shards import (  # noqa: E402
    build_sharded_index,
    corpus_slices,
    load_sharded_index,
)

DIM = 384
LATENT = 48
K = 10
SHARDS = 4
MAX_SHARD = FaissIndexSettings().max_shard_vectors
OUT = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------ measurement
class PeakMemory:
    """Peak resident memory of this process while the block runs, and how much above the level
    at entry it went (``added``, bytes): Linux's VmHWM after resetting it (``clear_refs`` 5);
    where that is refused, RSS sampled every 10 ms."""

    def __init__(self) -> None:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> PeakMemory:
        gc.collect()
        release_free_memory()
        self.start = self.peak = rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss())
        else:
            self.peak = high_water_mark()

    @property
    def added(self) -> int:
        return max(0, self.peak - self.start)


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS growth means new memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_mark() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return rss()


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak bytes added) of ``fn()``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    return result, seconds, memory.added


def best_qps(index: faiss.Index, queries: np.ndarray, repeats: int) -> tuple[np.ndarray, float]:
    best, rows = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        _, rows = index.search(queries, K)
        best = min(best, time.perf_counter() - started)
    return rows, len(queries) / best


def recall_at_k(reference: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(reference, found, strict=True)]))


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "faiss": faiss.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------- vectors
def synthetic_vectors(n: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """float32 [n, 384], unit norm: a 1,000-component Gaussian mixture in a 48-d latent space,
    mapped to 384-d by a fixed random matrix, plus isotropic noise. Built in chunks."""
    model = np.random.default_rng(12345)  # the distribution is fixed; ``seed`` picks the draws
    centers = model.normal(size=(1000, LATENT)).astype(np.float32)
    mapping = (model.normal(size=(LATENT, DIM)) / math.sqrt(LATENT)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        latent = centers[rng.integers(0, len(centers), m)] + \
            0.6 * rng.standard_normal((m, LATENT), dtype=np.float32)
        x = latent @ mapping + 0.15 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def nlist_for(n: int) -> int:
    return round(4 * math.sqrt(n))


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


# -------------------------------------------------------------------------------- FAISS part
def faiss_size(n: int, n_queries: int, threads: int, log: Callable[[str], None]) -> dict:
    faiss.omp_set_num_threads(threads)
    x, gen_s, _ = timed(lambda: synthetic_vectors(n, seed=1))
    queries = synthetic_vectors(n_queries, seed=2)
    log(f"[{n:,}] {n:,} x {DIM} vectors generated in {gen_s:.1f}s "
        f"({x.nbytes / 2**20:.0f} MiB)")
    repeats = 3 if n <= 100_000 else 1
    nlist = nlist_for(n)
    train = min(n, 40 * nlist)
    results: dict[str, dict] = {}

    flat, build_s, added = timed(lambda: build_index(x, "Flat", use_gpu="never"))
    reference, qps = best_qps(flat, queries, repeats)
    results["Flat"] = {"build_s": build_s, "build_added_bytes": added, "qps": qps,
                       "recall@10": 1.0, "bytes_per_vector": index_bytes(flat) / n}
    del flat
    log(f"[{n:,}] Flat: {fmt(results['Flat'])}")

    def measure(name: str, factory: str, **params: Any) -> None:
        index, build_s, added = timed(lambda: build_index(
            x, factory, train_size=train, use_gpu="never", **params))
        found, qps = best_qps(index, queries, repeats)
        results[name] = {"factory": factory, "build_s": build_s, "build_added_bytes": added,
                         "qps": qps, "recall@10": recall_at_k(reference, found),
                         "bytes_per_vector": index_bytes(index) / n, **params}
        log(f"[{n:,}] {name} ({factory}): {fmt(results[name])}")

    measure("HNSW32", "HNSW32", hnsw_ef_search=128)
    measure("IVF-PQ", f"IVF{nlist}_HNSW32,PQ48", nprobe=16)

    ids = [str(i) for i in range(n)]

    def measure_shards(name: str, factory: str, shards: int, **params: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix="jrr-scale-shards-"))
        try:
            def build_shards() -> dict:
                slices = ((x[a:b], ids[a:b]) for a, b in corpus_slices(n, shards))
                sample = x[np.sort(np.random.default_rng(0).choice(n, train, replace=False))]
                return build_sharded_index(folder / "idx", slices, factory,
                                           train_sample=sample, **params)

            _, build_s, added = timed(build_shards)
            size = sum(p.stat().st_size for p in (folder / "idx").glob("shard-*.faiss"))
            (index, _), load_s, _ = timed(lambda: load_sharded_index(folder / "idx"))
            found, qps = best_qps(index, queries, repeats)  # search params saved with each shard
            results[name] = {"factory": f"{shards} x {factory}", "shards": shards,
                             "build_s": build_s, "build_added_bytes": added, "load_s": load_s,
                             "qps": qps, "recall@10": recall_at_k(reference, found),
                             "bytes_per_vector": size / n, **params}
            del index
            log(f"[{n:,}] {name}: {fmt(results[name])}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    measure_shards("sharded IVF", f"IVF{nlist}_HNSW32,Flat", SHARDS, nprobe=16)
    # the faiss_index asset's default: one HNSW graph per MAX_SHARD vectors at most
    measure_shards("capped HNSW", "HNSW32", max(1, -(-n // MAX_SHARD)), hnsw_ef_search=128)
    return {"n": n, "queries": n_queries, "nlist": nlist, "train_size": train,
            "threads": threads, "indexes": results}


def fmt(row: dict) -> str:
    return (f"build {row['build_s']:.2f}s (+{row['build_added_bytes'] / 2**20:.0f} MiB peak), "
            f"{row['bytes_per_vector']:.0f} B/vector, {row['qps']:,.0f} q/s, "
            f"recall@10 {row['recall@10']:.4f}")


# --------------------------------------------------------------------------------- BM25 part
def synthetic_documents(n: int, seed: int, vocabulary: int = 50_000) -> tuple[list[str], int]:
    """``n`` documents of 20-100 words drawn from a Zipf(1.1) law over ``vocabulary`` made-up
    words, and their total word count."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "fu", "go", "ha", "ji",
                 "be", "vo", "zu"]
    words = ["".join(syllables[(i // 16 ** j) % 16] for j in range(4)) + str(i % 97)
             for i in range(vocabulary)]
    p = np.arange(1, vocabulary + 1) ** -1.1
    lengths = rng.integers(20, 101, n)
    ids = rng.choice(vocabulary, size=int(lengths.sum()), p=p / p.sum()).astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(map(words.__getitem__, ids[a:b].tolist()))
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return texts, int(lengths.sum())


def bm25_size(n: int, n_queries: int, log: Callable[[str], None]) -> dict:
    import polars as pl

    from jrr_pipeline.ml.settings import BM25IndexSettings
    from jrr_pipeline.ml.sparse import BM25Index, mine_negatives

    (texts, tokens), gen_s, _ = timed(lambda: synthetic_documents(n, seed=3))
    doc_ids = [f"d{i}" for i in range(n)]
    log(f"[{n:,}] {n:,} documents ({tokens:,} words) generated in {gen_s:.1f}s")
    config = BM25IndexSettings(include_title=False)
    index, index_s, added = timed(lambda: BM25Index.build(doc_ids, texts, config))
    scores = index._bm25.scores  # the bm25s sparse matrix: what the index keeps in memory
    index_bytes = sum(int(scores[k].nbytes) for k in ("data", "indices", "indptr"))
    rng = np.random.default_rng(4)
    picked = rng.choice(n, n_queries, replace=False)
    queries = pl.DataFrame({"query_id": [f"q{i}" for i in range(n_queries)],
                            "text": [" ".join(rng.choice(texts[d].split(), 6)) for d in picked]})
    qrels = pl.DataFrame({"query_id": queries["query_id"], "doc_id": [doc_ids[d] for d in picked],
                          "relevance": [1] * n_queries, "split": ["train"] * n_queries})
    negatives, mine_s, mine_added = timed(lambda: mine_negatives(index, queries, qrels, k=100))
    row = {"n": n, "tokens": tokens, "index_s": index_s,
           "index_added_bytes": added, "bytes_per_doc": index_bytes / n, "mine_s": mine_s,
           "mine_qps": n_queries / mine_s, "mine_added_bytes": mine_added,
           "negatives": negatives.height}
    log(f"[{n:,}] BM25: index {index_s:.1f}s (+{added / 2**20:.0f} MiB peak, "
        f"{row['bytes_per_doc']:.0f} B/doc), mining {n_queries} queries top-100 {mine_s:.1f}s "
        f"({row['mine_qps']:,.0f} q/s)")
    return row


# --------------------------------------------------------------------------- report and plot
def growth(sizes: list[int], values: list[float]) -> list[float]:
    """Exponent b of value ~ n^b between consecutive sizes."""
    return [math.log(values[i + 1] / values[i]) / math.log(sizes[i + 1] / sizes[i])
            for i in range(len(sizes) - 1)]


def table(results: dict) -> str:
    lines = ["| n | index | build s | build +MiB | bytes/vector | q/s | recall@10 |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for key in sorted(results.get("faiss", {}), key=int):
        for name, row in results["faiss"][key]["indexes"].items():
            lines.append(f"| {int(key):,} | {name} | {row['build_s']:.2f} | "
                         f"{row['build_added_bytes'] / 2**20:.0f} | {row['bytes_per_vector']:.0f} "
                         f"| {row['qps']:,.0f} | {row['recall@10']:.4f} |")
    lines += ["", "| n docs | BM25 index s | index +MiB | bytes/doc | mining s (1,000 q, top-100) "
                  "| mining q/s |", "|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(results.get("bm25", {}), key=int):
        row = results["bm25"][key]
        lines.append(f"| {int(key):,} | {row['index_s']:.1f} | "
                     f"{row['index_added_bytes'] / 2**20:.0f} | {row['bytes_per_doc']:.0f} | "
                     f"{row['mine_s']:.1f} | {row['mine_qps']:,.0f} |")
    return "\n".join(lines)


def growth_lines(results: dict) -> list[str]:
    out = []
    faiss_sizes = sorted(results.get("faiss", {}), key=int)
    if len(faiss_sizes) > 1:
        names = results["faiss"][faiss_sizes[0]]["indexes"]
        for name in names:
            ns = [int(k) for k in faiss_sizes]
            build = [results["faiss"][k]["indexes"][name]["build_s"] for k in faiss_sizes]
            per_query = [1 / results["faiss"][k]["indexes"][name]["qps"] for k in faiss_sizes]
            out.append(f"{name}: build time ~ n^{fmt_exp(growth(ns, build))}, time per query "
                       f"~ n^{fmt_exp(growth(ns, per_query))}")
    bm25_sizes = sorted(results.get("bm25", {}), key=int)
    if len(bm25_sizes) > 1:
        ns = [int(k) for k in bm25_sizes]
        for field, what in (("index_s", "BM25 index time"), ("mine_s", "BM25 mining time")):
            values = [results["bm25"][k][field] for k in bm25_sizes]
            out.append(f"{what} ~ n^{fmt_exp(growth(ns, values))}")
    return out


def fmt_exp(exponents: list[float]) -> str:
    return "/".join(f"{e:.2f}" for e in exponents)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (build_ax, qps_ax, mem_ax) = plt.subplots(1, 3, figsize=(16, 5))
    sizes = sorted(results.get("faiss", {}), key=int)
    names = list(results["faiss"][sizes[0]]["indexes"]) if sizes else []
    ns = np.array([int(k) for k in sizes], dtype=float)
    for name in names:
        rows = [results["faiss"][k]["indexes"][name] for k in sizes]
        build_ax.plot(ns, [r["build_s"] for r in rows], "o-", label=f"{name} build")
        qps_ax.plot(ns, [r["qps"] for r in rows], "o-", label=name)
        mem_ax.plot(ns, [r["bytes_per_vector"] for r in rows], "o-", label=f"{name} (B/vector)")
    bm25 = sorted(results.get("bm25", {}), key=int)
    if bm25:
        bn = np.array([int(k) for k in bm25], dtype=float)
        rows = [results["bm25"][k] for k in bm25]
        build_ax.plot(bn, [r["index_s"] for r in rows], "s--", label="BM25 index")
        build_ax.plot(bn, [r["mine_s"] for r in rows], "s:", label="BM25 mining (1,000 q)")
        qps_ax.plot(bn, [r["mine_qps"] for r in rows], "s--", label="BM25 mining")
        mem_ax.plot(bn, [r["bytes_per_doc"] for r in rows], "s--", label="BM25 (B/doc)")
    every = np.array(sorted({*ns.tolist(), *[float(k) for k in bm25]}))
    if len(every) > 1:  # reference slopes through the smallest size's fastest build
        lows = [r for r in build_ax.get_lines() if len(r.get_ydata())]
        y0 = min(float(line.get_ydata()[0]) for line in lows)
        build_ax.plot(every, y0 * every / every[0], "k:", lw=1, label="~ n")
        build_ax.plot(every, y0 * every * np.log(every) / (every[0] * np.log(every[0])), "k--",
                      lw=1, label="~ n log n")
    for ax, title, ylabel in ((build_ax, "build / index time", "seconds"),
                              (qps_ax, "search throughput, k=10", "queries / s"),
                              (mem_ax, "index memory", "bytes per vector / document")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors / documents")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    info = results.get("machine", {})
    fig.suptitle(f"jrr-pipeline scale bench: {info.get('cpu', '?')}, {info.get('cores', '?')} "
                 f"cores, {info.get('memory_gib', '?')} GiB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated sizes (vectors and documents)")
    parser.add_argument("--parts", default="faiss,bm25", help="faiss, bm25 or both")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for scale.json / .png")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    parts = {p.strip() for p in args.parts.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scale.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"machine: {results['machine']}")
    started = time.perf_counter()
    for n in sizes:
        if "faiss" in parts:
            results.setdefault("faiss", {})[str(n)] = faiss_size(n, args.queries, args.threads,
                                                                 log)
            path.write_text(json.dumps(results, indent=2))
            gc.collect()
        if "bm25" in parts:
            results.setdefault("bm25", {})[str(n)] = bm25_size(n, args.queries, log)
            path.write_text(json.dumps(results, indent=2))
            gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.setdefault("runs", []).append({"sizes": sizes, "parts": sorted(parts),
                                           "seconds": round(time.perf_counter() - started, 1),
                                           "peak_rss_gib": round(peak / 2**30, 2)})
    path.write_text(json.dumps(results, indent=2))
    plot(results, args.out / "scale.png")
    log("\n" + table(results))
    log("\ngrowth exponents between consecutive sizes (1.0 = linear):")
    for line in growth_lines(results):
        log(f"  {line}")
    log(f"\nthis run: {time.perf_counter() - started:.0f}s, peak RSS {peak / 2**30:.2f} GiB; "
        f"{path}, {args.out / 'scale.png'}")


if __name__ == "__main__":
    main()
