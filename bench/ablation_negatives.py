"""Ablation: every hard-negative strategy of the survey trained once, dev and test side by side.

Reads a materialized `$JRR_HOME` (run `jrr run DATA --preset P` first: it holds the BM25
negatives, the warm-up reranker, the candidates table and the `qrels` dev split). Each variant is
the preset's stage settings with one strategy switched on, trained through the same launcher and
settings path as the pipeline (`--stage warmup_retriever`, the default, or `joint_models` with
`--pair`), then evaluated on dev AND test (`select_defaults.evaluate_variant`):

- warm-up retriever: `uniform` (today's BM25 window, the baseline), `denoised`, `simans`
  (`sampler`), `tas_balanced` (`batching`), `cache` (`negatives`);
- joint models: `uniform`, `denoised`, `simans` (`joint_models.sampler`; they differ only when
  the candidates table holds more negatives per query than `list_length - 1`).

Then `combined`: every strategy that beat the baseline on dev (the best sampler, TAS-Balanced,
the cache) switched on together, when that is two or more (`--combined auto`), or the strategies
named (`--combined simans,tas_balanced,cache`), or none (`--combined none`). **The best row is
chosen on dev only** (a tie goes to the faster one); test is printed beside it for the record.
Each row gives the training seconds (scoring and clustering included), the peak resident memory
of its own process (training and evaluation), and the paired standard error of its dev nDCG@10
difference to the baseline. Writes a JSON file and a PNG plot (dev and test nDCG@10, and train
seconds, per variant). Not run by the tests.

    .venv/bin/python bench/ablation_negatives.py [--preset cpu] [--variants uniform,denoised,...]
    .venv/bin/python bench/ablation_negatives.py --stage joint_models --pair \\
        --base '{"list_length": 5}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_defaults import evaluate_variant, paired_se, train_variant  # noqa: E402

STRATEGIES = {
    "warmup_retriever": {"uniform": {}, "denoised": {"sampler": "denoised"},
                         "simans": {"sampler": "simans"},
                         "tas_balanced": {"batching": "tas_balanced"},
                         "cache": {"negatives": "cache"}},
    "joint_models": {"uniform": {}, "denoised": {"sampler": "denoised"},
                     "simans": {"sampler": "simans"}},
}
SAMPLERS = ("denoised", "simans")


def one_variant(args: argparse.Namespace, name: str, changes: dict) -> dict:
    """Train and evaluate one variant in this process; the row, with per-query dev figures."""
    from jrr_pipeline.settings import resolve_settings

    home = Path(args.home).resolve()
    resolved = resolve_settings(args.preset, {args.stage: {**json.loads(args.base), **changes}})
    settings = resolved[args.stage]
    work = Path(args.work).resolve() / args.stage / name
    started = time.perf_counter()
    model_dir, result = train_variant(args.stage, settings, home, args.dataset, work)
    train_s = time.perf_counter() - started
    evaluation = resolved["evaluation_report"]
    row = {"variant": name, "changes": changes, "train_s": round(train_s, 1),
           "prepare_s": round(result.get("prepare_s") or 0.0, 1),
           "steps": result.get("steps") or result.get("step"),
           **evaluate_variant(model_dir, args.stage, home, args.pair, evaluation.rerank_depth,
                              evaluation.rerank_fusion_weight),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    return row


def in_subprocess(args: argparse.Namespace, name: str, changes: dict) -> dict:
    """``one_variant`` in a fresh process: its peak memory is that variant's alone."""
    cmd = [sys.executable, __file__, "--one", name, "--changes", json.dumps(changes),
           *sys.argv[1:]]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ranked(row: dict, measure: str) -> tuple[float, float]:
    """Sort key of the choice: the dev figure, then the shorter training."""
    return row[measure], -row["train_s"]


def combination(rows: list[dict], measure: str, wanted: str, strategies: dict) -> dict:
    """The changes of the ``combined`` row: ``auto`` = the best sampler that beat the baseline on
    dev plus every other strategy that did (when two or more), else the named strategies."""
    if wanted == "none":
        return {}
    if wanted != "auto":
        return {k: v for name in wanted.split(",") for k, v in strategies[name].items()}
    base = next(r for r in rows if r["variant"] == "uniform")[measure]
    winners = [r for r in rows if r["variant"] != "uniform" and r[measure] > base]
    samplers = [r for r in winners if r["variant"] in SAMPLERS]
    chosen = [max(samplers, key=lambda r: ranked(r, measure))] if samplers else []
    chosen += [r for r in winners if r["variant"] not in SAMPLERS]
    return {k: v for r in chosen for k, v in r["changes"].items()} if len(chosen) > 1 else {}


def plot(rows: list[dict], measure: str, path: Path) -> None:
    """Dev and test figures per variant (left), train seconds (right)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(8.0, 1.6 * len(rows) + 3), 4.0))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    for i, split in enumerate(("dev", "test")):
        key = measure.replace("dev_", f"{split}_")
        left.bar(x + (i - 0.5) * 0.4, [r[key] for r in rows], 0.4, label=split)
    low = min(min(r[measure], r[measure.replace("dev_", "test_")]) for r in rows)
    left.set_ylim(max(0.0, low - 0.05), None)
    left.set_xticks(x, names, rotation=20)
    left.set_title(f"{measure.removeprefix('dev_')} (chosen on dev)")
    left.legend()
    right.bar(x, [r["train_s"] for r in rows], 0.6, color="gray")
    right.set_xticks(x, names, rotation=20)
    right.set_title("train seconds")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--stage", choices=sorted(STRATEGIES), default="warmup_retriever")
    parser.add_argument("--variants", default="", help="comma-separated (default: all)")
    parser.add_argument("--base", default="{}", help="JSON overrides of every variant")
    parser.add_argument("--pair", action="store_true", help="joint: evaluate the fused pair")
    parser.add_argument("--combined", default="auto",
                        help="auto | none | strategies to switch on together (a,b,...)")
    parser.add_argument("--work", default="bench/results/ablation_negatives")
    parser.add_argument("--out", default="bench/results/ablation_negatives.json")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--changes", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        print(json.dumps(one_variant(args, args.one, json.loads(args.changes))), flush=True)
        return
    strategies = STRATEGIES[args.stage]
    names = [v for v in args.variants.split(",") if v] or list(strategies)
    named = [] if args.combined in ("auto", "none") else args.combined.split(",")
    unknown = sorted(set(names + named) - set(strategies))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(strategies)}")
    names = ["uniform"] + [n for n in names if n != "uniform"]  # the baseline comes first
    measure = "dev_pair_nDCG@10" if args.pair else "dev_nDCG@10"
    rows = [in_subprocess(args, name, strategies[name]) for name in names]
    for row in rows:
        print({k: v for k, v in row.items() if not k.startswith("_")}, flush=True)
    combined = combination(rows, measure, args.combined, strategies)
    if combined:
        rows.append(in_subprocess(args, "combined", combined))
    report(rows, measure, args)


def report(rows: list[dict], measure: str, args: argparse.Namespace) -> None:
    """Paired differences to the baseline, the table, the choice (dev only), JSON and plot."""
    key = "_dev_pair_per_query" if args.pair else "_dev_per_query"
    baseline = rows[0]
    for row in rows[1:]:
        mean, se = paired_se(baseline[key], row[key])
        row["dev_diff_vs_uniform"], row["dev_diff_se"] = round(mean, 4), round(se, 4)
    for row in rows:
        for k in [k for k in row if k.startswith("_")]:
            row.pop(k)
    best = max(rows, key=lambda r: ranked(r, measure))
    test = measure.replace("dev_", "test_")
    print(f"\n| variant | {measure} | {test} | dev diff (se) | train s | peak GiB |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        diff = (f"{r['dev_diff_vs_uniform']:+.4f} ({r['dev_diff_se']:.4f})"
                if "dev_diff_vs_uniform" in r else "baseline")
        print(f"| {r['variant']}{' (best on dev)' if r is best else ''} | {r[measure]:.4f} | "
              f"{r[test]:.4f} | {diff} | {r['train_s']:.0f} | {r['peak_rss_gib']} |")
    gain = best[measure] - baseline[measure]
    print(f"\nchosen on dev ({measure}): {best['variant']} {best['changes']}, {gain:+.4f} over "
          f"uniform at {best['train_s'] / max(baseline['train_s'], 1e-9):.2f}x its train time; "
          f"its test figure, for the record: {best[test]:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"stage": args.stage, "preset": args.preset, "measure": measure,
                               "chosen": best["variant"], "rows": rows}, indent=2))
    plot(rows, measure, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
