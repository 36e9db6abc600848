"""Passage-encoding throughput: our ``DenseRetriever.embed`` vs sentence-transformers ``encode``.

Encodes the first N SciFact passages (title + " " + text, max_length 256) with the packaged
all-MiniLM-L6-v2 and reports passages/s and the cosine of every variant against
sentence-transformers' fp32 embeddings. Not run by the tests.

    .venv/bin/python bench/encode_throughput.py [--n 1000] [--device cpu] [--out result.json]
        [--try-compile] [--try-int8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from jrr_pipeline.ml.text import passage_text

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared/datasets/scifact/corpus.jsonl"


def load_passages(path: Path, n: int) -> list[str]:
    """First ``n`` corpus rows as "title text"."""
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(passage_text(row.get("title"), row.get("text")))
            if len(texts) == n:
                break
    return texts


def cpu_flags() -> list[str]:
    """The bf16-relevant CPU flags (AMX / AVX-512 BF16) present on this machine."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return []
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    return sorted(wanted & set(flags))


def timed(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall time and best process CPU time over ``repeats`` runs, and the last result.

    On a shared CPU the wall time depends on the other processes' load; the CPU time (all
    threads of this process) is the steadier measure of the work done.
    """
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def variant_result(seconds: float, cpu_seconds: float, emb: np.ndarray, ref: np.ndarray,
                   st_seconds: float, st_cpu_seconds: float) -> dict[str, float]:
    """Speed of one variant and the cosine of its embeddings against ST's fp32 ones."""
    cos = cosines(emb, ref)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "passages_per_s": len(emb) / seconds,
        "speedup_vs_st": st_seconds / seconds,
        "cpu_time_speedup_vs_st": st_cpu_seconds / cpu_seconds,
        "cosine_vs_st_fp32_min": float(cos.min()),
        "cosine_vs_st_fp32_mean": float(cos.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--st-batch-size", type=int, default=32, help="ST's default is 32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="also time bf16 autocast on a CPU without AMX/AVX-512 BF16 (it is emulated: slow)",
    )
    parser.add_argument(
        "--try-compile", action="store_true",
        help="also time the encoder under torch.compile (dynamic shapes; compile time excluded)",
    )
    parser.add_argument(
        "--try-int8", action="store_true",
        help="also time int8 dynamic quantization of every Linear (fast, but check the cosine)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from sentence_transformers import SentenceTransformer

    from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig, default_base_model

    texts = load_passages(args.corpus, args.n)
    load_before = os.getloadavg()
    st = SentenceTransformer(default_base_model(), device=args.device)
    st.max_seq_length = 256
    ours = DenseRetriever.from_pretrained("default", RetrieverConfig(passage_max_length=256))
    ours.to(args.device)

    warm = texts[:16]  # first calls pay one-off costs (allocator, kernels)
    st.encode(warm)
    ours.embed(warm, "passage")

    results: dict[str, dict[str, float]] = {}
    t_st, cpu_st, ref = timed(
        lambda: st.encode(texts, batch_size=args.st_batch_size, convert_to_numpy=True), args.repeats
    )
    results["sentence_transformers_fp32"] = {
        "seconds": t_st,
        "cpu_seconds": cpu_st,
        "passages_per_s": len(texts) / t_st,
    }

    flags = cpu_flags()
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    variants: list[tuple[str, torch.dtype | None]] = [("ours_fp32", None)]
    if args.device.startswith("cuda"):
        variants += [("ours_bf16", torch.bfloat16), ("ours_fp16", torch.float16)]
    elif native_bf16 or args.force_bf16:
        variants.append(("ours_bf16", torch.bfloat16))
    for name, dtype in variants:
        seconds, cpu_seconds, emb = timed(
            lambda dtype=dtype: ours.embed(
                texts, "passage", batch_size=args.batch_size, autocast_dtype=dtype
            ),
            args.repeats,
        )
        results[name] = variant_result(seconds, cpu_seconds, emb, ref, t_st, cpu_st)

    extra = []
    if args.try_compile:
        compiled = copy.deepcopy(ours)
        compiled.encoder = torch.compile(compiled.encoder, dynamic=True)
        extra.append(("ours_torch_compile", compiled))
    if args.try_int8 and args.device == "cpu":
        quantized = copy.deepcopy(ours)
        quantized.encoder = torch.ao.quantization.quantize_dynamic(
            quantized.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        extra.append(("ours_int8_dynamic", quantized))
    for name, model in extra:
        started = time.perf_counter()
        model.embed(texts[: args.batch_size], "passage")  # compile / first-call costs
        warmup_s = time.perf_counter() - started
        seconds, cpu_seconds, emb = timed(
            lambda model=model: model.embed(texts, "passage", batch_size=args.batch_size),
            args.repeats,
        )
        results[name] = {**variant_result(seconds, cpu_seconds, emb, ref, t_st, cpu_st),
                         "first_call_s": warmup_s}

    report = {
        "n_passages": len(texts),
        "max_length": 256,
        "device": args.device,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": flags,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
