"""What each correction of the trust issue is worth: the same training with one fix undone.

Each variant trains a stage of a materialized `$JRR_HOME` (run `jrr run` first) with the current
code and the `cpu` preset, but with one correction reverted by patching this process (the product
keeps no switch for a defect):

- `no_positive_mask` (warm-up retriever): a query's other labelled positives count as in-batch
  negatives again.
- `bf16_scores` (either stage): score matmuls, softmaxes and KLs run under bf16 autocast again.
- `global_clip` (joint): one gradient-norm clip over both models instead of one per model.
- `first_positive_only` (joint): one list per query (its first positive) instead of one per
  labelled positive.
- `reverse_kl_static` (joint, `mode=static`): KL(p_retriever || p_teacher) instead of the teacher
  as target.
- `old_ar2_loss` (joint, `method=ar2`): lambda * L_adv + (1 - lambda) * KL(p_retriever ||
  p_ranker) with lambda 0.5 (an entropy bonus in disguise) instead of L_adv + lambda *
  KL(p_ranker || p_retriever).
- `raw_refresh` (joint, `method=ar2`): refreshed lists drawn from the raw top-k (no denoising).

`--fixed` runs the same stage with nothing reverted (the "after" row). Dev and test are reported
side by side; nothing is chosen here. Not run by the tests.

    .venv/bin/python bench/ablation_fixes.py --stage warmup_retriever --variants fixed,no_positive_mask
    .venv/bin/python bench/ablation_fixes.py --stage joint_models --pair \\
        --variants fixed,global_clip,first_positive_only
    .venv/bin/python bench/ablation_fixes.py --stage joint_models --pair --base '{"method": "ar2"}' \\
        --variants fixed,old_ar2_loss,raw_refresh
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_defaults import evaluate_variant, train_variant  # noqa: E402


def _no_positive_mask() -> None:
    import torch

    from jrr_pipeline.ml.training import warmup

    real = warmup.positives_mask
    warmup.positives_mask = lambda batch, keys, offset=0: torch.zeros_like(
        real(batch, keys, offset))


def _bf16_scores() -> None:
    from jrr_pipeline.ml import precision
    from jrr_pipeline.ml.losses import adversarial, contrastive, distillation, listwise

    for module in (precision, adversarial, contrastive, distillation, listwise):
        module.full_precision = lambda device: contextlib.nullcontext()


def _global_clip() -> None:
    import math

    import torch

    from jrr_pipeline.ml.training import loop

    def clip_all(modules, max_norm):
        params = [p for m in modules.values() for p in m.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if max_norm > 0 else math.nan
        return {"all": norm}

    loop._clip_each = clip_all


def _first_positive_only() -> None:
    from jrr_pipeline.ml.training import lists, rocketqav2  # noqa: F401 (rocketqav2 imports lists)

    real = lists.build_candidate_lists

    def first_only(*args, **kwargs):
        seen, out = set(), []
        for item in real(*args, **kwargs):
            if item.query_id not in seen:
                seen.add(item.query_id)
                out.append(item)
        return out

    lists.build_candidate_lists = first_only


def _reverse_kl_static() -> None:
    from jrr_pipeline.ml.losses.distillation import ListwiseKLLoss
    from jrr_pipeline.ml.training import rocketqav2

    class ReverseKL(ListwiseKLLoss):
        def __init__(self, temperature=1.0, direction="de||ce", detach_teacher=False):
            super().__init__(temperature, "de||ce", detach_teacher)

    rocketqav2.ListwiseKLLoss = ReverseKL


def _old_ar2_loss() -> None:
    import torch.nn.functional as F

    from jrr_pipeline.ml.losses import adversarial

    def forward(self, retriever_scores, ranker_scores):
        log_g = F.log_softmax(retriever_scores.float() / self.temperature, dim=-1)
        log_d = F.log_softmax(ranker_scores.detach().float() / self.temperature, dim=-1)
        p_g = log_g.exp()
        adv = -(p_g * log_d).sum(-1).mean()
        kl = (p_g * (log_g - log_d)).sum(-1).mean()
        self.last_terms = {"adversarial": float(adv.detach()), "kl": float(kl.detach())}
        return 0.5 * adv + 0.5 * kl

    adversarial.AR2RetrieverLoss.forward = forward


def _raw_refresh() -> None:
    from jrr_pipeline.ml.training import ar2

    real = ar2._denoised_pools

    def keep_all(reranker, data, retrieved, *args, **kwargs):
        return {q: list(d) for q, d in retrieved.items()}, {q: [] for q in retrieved}

    ar2._denoised_pools = keep_all
    assert real is not keep_all


PATCHES = {"fixed": lambda: None, "no_positive_mask": _no_positive_mask,
           "bf16_scores": _bf16_scores, "global_clip": _global_clip,
           "first_positive_only": _first_positive_only, "reverse_kl_static": _reverse_kl_static,
           "old_ar2_loss": _old_ar2_loss, "raw_refresh": _raw_refresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("JRR_HOME", ".jrr"))
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--stage", choices=["warmup_retriever", "joint_models"], required=True)
    parser.add_argument("--base", default="{}", help="JSON overrides of the cpu settings")
    parser.add_argument("--variants", default="fixed")
    parser.add_argument("--pair", action="store_true")
    parser.add_argument("--work", default="bench/results/ablation_fixes")
    parser.add_argument("--out", default="bench/results/ablation_fixes.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(PATCHES))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(PATCHES)}")
    if len(names) > 1:  # each variant in its own process: a patch must not leak into the next
        for name in names:
            cmd = [sys.executable, __file__, *[a for a in sys.argv[1:]]]
            i = cmd.index("--variants")
            cmd[i + 1] = name
            subprocess_run(cmd)
        return

    from jrr_pipeline.settings import resolve_settings

    name = names[0]
    PATCHES[name]()
    home = Path(args.home).resolve()
    base = json.loads(args.base)
    resolved = resolve_settings("cpu", {args.stage: base})
    settings = resolved[args.stage]
    tag = f"{args.stage}:{json.dumps(base, sort_keys=True)}:{name}"
    work = Path(args.work).resolve() / tag.replace(":", "_").replace('"', "").replace(" ", "")
    started = time.perf_counter()
    model_dir, result = train_variant(args.stage, settings, home, args.dataset, work)
    row = {"variant": tag, "train_s": round(time.perf_counter() - started, 1),
           "steps": result.get("steps") or result.get("step"),
           **evaluate_variant(model_dir, args.stage, home, args.pair,
                              resolved["evaluation_report"].rerank_depth,
                              resolved["evaluation_report"].rerank_fusion_weight),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    for key in [k for k in row if k.startswith("_")]:
        row.pop(key)
    if "iterations" in result:
        row["refresh"] = [{k: v for k, v in it.items() if k.startswith(("eval_", "refresh_r",
                                                                         "refresh_t"))}
                          for it in result["iterations"]]
    print(row, flush=True)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    rows = [r for r in rows if r["variant"] != tag] + [row]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))


def subprocess_run(cmd: list[str]) -> None:
    import subprocess

    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
