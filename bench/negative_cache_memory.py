"""Peak memory of the warm-up retriever with and without a negative cache (packaged MiniLM).

Trains the `cpu` preset's warm-up retriever (batch 16, 3 hard negatives, passages cut at 192
tokens, queries at 64) for a few steps on synthetic text long enough to fill every token, once
per configuration, each in its own process (peak RSS is a per-process maximum). Reports the
negatives each query sees per step (in-batch + hard + cached, positives masked), the peak RSS,
seconds per step and the machine. Not run by the tests.

    .venv/bin/python bench/negative_cache_memory.py [--sizes 0,1024,4096] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = ["protein", "cell", "gene", "tumor", "immune", "dose", "vaccine", "insulin", "glucose",
         "neuron", "synapse", "cortex", "bacteria", "virus", "host", "infection", "genome",
         "variant", "allele", "cardiac", "artery", "pressure", "stem", "embryo", "tissue",
         "obesity", "diet", "metabolism", "sleep", "clock", "malaria", "parasite", "asthma",
         "lung", "kidney", "renal", "bone", "calcium", "liver", "enzyme", "skin", "pigment",
         "retina", "muscle", "fiber"]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def measure(cache_size: int, steps: int, threads: int) -> dict:
    """One configuration in this process: ``cache_size`` 0 = the hard-negative lists only."""
    import torch

    from jrr_pipeline.ml.training import train
    from jrr_pipeline.ml.training.loop import peak_rss_gb
    from jrr_pipeline.ml.training.negcache import NegativeCache
    from jrr_pipeline.ml.training.warmup import RetrievalExample, build_warmup_task
    from jrr_pipeline.settings import resolve_settings

    torch.set_num_threads(threads)
    changes = {"max_steps": steps, "log_every": 1, "checkpoint_every": steps}
    if cache_size:
        changes |= {"negatives": "cache", "cache_size": cache_size}
    settings = resolve_settings("cpu", {"warmup_retriever": changes})["warmup_retriever"]
    rng = random.Random(0)
    n = settings.batch_size * steps
    examples = [RetrievalExample(query=text(rng, 12), positive=text(rng, 220),
                                 negatives=[text(rng, 220) for _ in range(settings.n_negatives)],
                                 query_id=f"q{i}", positive_id=f"p{i}",
                                 negative_ids=[f"n{i}_{k}" for k in range(settings.n_negatives)],
                                 positive_ids=frozenset({f"p{i}"})) for i in range(n)]
    task = build_warmup_task(settings)
    if cache_size:
        task.cache = NegativeCache([f"c{i}" for i in range(cache_size)],
                                   [text(rng, 220) for _ in range(cache_size)],
                                   task.retriever.embedding_dim, settings.cache_refresh)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train(task, examples, settings.train_config(), Path(out) / "model",
                       progress=False)
    metrics = [m for _, m in result.history]
    return {
        "cache_size": cache_size, "steps": steps, "batch_size": settings.batch_size,
        "hard_negatives": settings.n_negatives, "passage_max_length": settings.passage_max_length,
        "cache_refresh": settings.cache_refresh if cache_size else None,
        "negatives_per_query": metrics[-1].get(
            "negatives_per_query", settings.batch_size * (1 + settings.n_negatives) - 1),
        "peak_rss_gib": round(peak_rss_gb(), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_per_step_after_first": round(
            sum(1 / m["examples_per_s"] * settings.batch_size for m in metrics[1:])
            / max(len(metrics) - 1, 1), 1),
        "threads": threads, "bf16": result.bf16,
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,1024", help="cache sizes (0 = no cache)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/negative_cache_memory.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps, args.threads)), flush=True)
        return
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--steps",
                              str(args.steps), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    report = {"machine": machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("\n| cache | negatives / query / step | peak RSS GiB | s / step |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache_size']} | {r['negatives_per_query']:.0f} | {r['peak_rss_gib']} | "
              f"{r['seconds_per_step_after_first']} |")
    print(f"\nmachine: {report['machine']}")


if __name__ == "__main__":
    main()
