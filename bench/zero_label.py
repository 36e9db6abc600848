"""Zero-label retriever recipes beside the game: can the packaged MiniLM be improved on a corpus
with no labelled queries by pseudo-queries cut from the corpus itself?

Reads the corpus and the dev / test qrels of a materialized `$JRR_HOME` (any labels mode: only
dev and test are read, to score), trains a fresh retriever per recipe and scores it as the
report does (Flat index, nDCG@10 and R@100 on dev and test). Nothing is chosen on test:

- `zero_shot`: the base model untouched;
- `teacher`: the fusion dense0 + w * BM25 / max(BM25) used as the teacher below
  (`jrr_pipeline.ml.generation.fusion_relevance.FusionRelevance.parts`), for w in
  `--teacher-weights` (w picked on dev), scored as a ranker (it is not a dense retriever);
- `ict`: Inverse Cloze Task (Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open
  Domain Question Answering"): a sentence of a document is the query, the document with that
  sentence removed (probability 0.9) the positive, 3 BM25 negatives from its top 30; InfoNCE as
  the warm-up (`RetrieverWarmupTask`);
- `teacher_distill`: the same sentence queries, each with the teacher's top-k list (its source
  kept), the retriever trained to the teacher's distribution over the list (forward KL, the
  static form of `ListwiseKLLoss`), GPL-style (Wang et al. 2022, "GPL: Generative Pseudo
  Labeling for Unsupervised Domain Adaptation of Dense Retrieval") with a lexical+dense fusion
  in place of the cross-encoder teacher no offline weights give us;
- `teacher_distill_queries`: the same distillation on the dataset's *train* query texts with
  their qrels unread (the GPL setting: a query log without judgements), to tell whether the
  queries' form or the teacher limits the sentence-query recipe;
- `teacher_distill_titles`: the same distillation with document titles as the queries
  (scientific titles read like claims; the source document stays in its list);
- `teacher_distill_generated`: the same distillation on the game's final generated queries
  (`generated_queries`, round -1; the home must come from a `--labels none|augment` run);
- every trained recipe is also scored after WiSE-FT weight interpolation with the base model
  (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"), `--wise` alphas.

    .venv/bin/python bench/zero_label.py --home $JRR_HOME --out zero_label.json

Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_defaults import evaluate_models  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def sentences(text: str, min_words: int = 8, max_words: int = 45) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text)
            if min_words <= len(s.split()) <= max_words]


def sentence_queries(titles: list[str], bodies: list[str], n_docs: int, seed: int,
                     remove_p: float) -> list[tuple[str, int, str]]:
    """(sentence, document index, positive text) for one sentence of ``n_docs`` documents."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(bodies), size=min(n_docs, len(bodies)), replace=False):
        found = sentences(bodies[i])
        if not found:
            continue
        sentence = found[int(rng.integers(len(found)))]
        body = bodies[i].replace(sentence, " ") if rng.random() < remove_p else bodies[i]
        out.append((sentence, int(i), f"{titles[i]} {body}".strip()))
    return out


def fresh_retriever(args):
    from jrr_pipeline.ml.modeling import DenseRetriever, RetrieverConfig

    return DenseRetriever.from_pretrained(args.base_model, RetrieverConfig(
        query_max_length=64, passage_max_length=args.passage_max_length))


def train_steps(model, batches, loss_of, lr: float, label: str, dtype) -> None:
    import torch

    from jrr_pipeline.ml.precision import autocast_context
    from jrr_pipeline.ml.training.schedule import build_optimizer

    optimizer = build_optimizer(model.named_parameters(), lr, weight_decay=0.01)
    model.train()
    started, losses = time.perf_counter(), []
    for step, batch in enumerate(batches, 1):
        with autocast_context(model.device, dtype):
            loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step == len(batches):
            eta = (time.perf_counter() - started) / step * (len(batches) - step)
            print(f"  {label} step {step}/{len(batches)} loss {np.mean(losses[-20:]):.4f} "
                  f"eta {eta:.0f}s", flush=True)
    model.eval()


def train_ict(args, queries, doc_ids, passages, bm25):
    from jrr_pipeline.ml.training.examples import RetrievalExample
    from jrr_pipeline.ml.training.warmup import RetrieverWarmupTask

    rng = np.random.default_rng(args.seed + 7)
    ranked, _ = bm25.search([q for q, _, _ in queries], 30)
    examples = []
    for j, ((query, i, positive), row) in enumerate(zip(queries, ranked, strict=True)):
        pool = [d for d in row if d != doc_ids[i]]
        negatives = [pool[k] for k in sorted(rng.permutation(len(pool))[:3])]
        examples.append(RetrievalExample(
            query=query, positive=positive, negatives=[passages[d] for d in negatives],
            query_id=f"ict-{j}", positive_id=doc_ids[i], negative_ids=negatives,
            positive_ids=frozenset({doc_ids[i]})))
    model = fresh_retriever(args)
    task = RetrieverWarmupTask(model, cross_batch=False)
    order = np.random.default_rng(args.seed).permutation(len(examples))
    batches = [[examples[k] for k in order[s:s + 16]] for s in range(0, len(order) - 15, 16)]
    train_steps(model, batches, lambda batch: task.loss(batch)[0], args.lr, "ict",
                args.dtype)
    return model


def train_teacher_distill(args, queries, doc_ids, passages, fusion):
    """``queries``: (text, source document index or None, unused); a source is kept in its list."""
    import torch

    from jrr_pipeline.ml.losses.distillation import ListwiseKLLoss

    dense, lexical = fusion.parts([q for q, _, _ in queries])
    scores = dense + float(args.teacher_weight) * lexical
    lists = []
    for r, (_, i, _) in enumerate(queries):
        top = list(np.argsort(-scores[r])[:args.list_length])
        if i is not None and i not in top:
            top[-1] = i
        lists.append((top, scores[r, top]))
    model = fresh_retriever(args)
    temperature = model.config.temperature
    kl = ListwiseKLLoss(temperature=1.0, direction="ce||de", detach_teacher=True)

    def loss_of(batch):
        q = model.encode_queries(model.tokenize_queries([queries[j][0] for j in batch]))
        p = model.encode_passages(model.tokenize_passages(
            [passages[doc_ids[d]] for j in batch for d in lists[j][0]]))
        student = torch.einsum("bh,bkh->bk", q.float(),
                               p.float().view(len(batch), args.list_length, -1)) / temperature
        target = torch.tensor(np.stack([lists[j][1] for j in batch]),
                              dtype=torch.float32) / temperature
        return kl(student, target)

    order = np.random.default_rng(args.seed).permutation(len(queries))
    batches = [list(order[s:s + 8]) for s in range(0, len(order) - 7, 8)]
    train_steps(model, batches, loss_of, args.lr, "teacher_distill", args.dtype)
    return model


def distillation_queries(variant: str, args, warehouse, qrels, qtext, doc_ids, titles,
                         bodies) -> list[tuple[str, int | None, str]]:
    """The queries a ``teacher_distill*`` variant trains on."""
    if variant == "teacher_distill":
        return sentence_queries(titles, bodies, args.distill_docs, args.seed, remove_p=0.0)
    if variant == "teacher_distill_queries":
        train_ids = sorted(qrels.filter(pl.col("split") == "train")["query_id"].unique().to_list())
        return [(qtext[q], None, "") for q in train_ids]
    if variant == "teacher_distill_titles":
        rng = np.random.default_rng(args.seed)
        titled = [i for i, t in enumerate(titles) if len(t.split()) >= 4]
        picked = rng.choice(len(titled), size=min(args.distill_docs, len(titled)), replace=False)
        return [(titles[titled[k]], titled[k], "") for k in sorted(picked)]
    if variant == "teacher_distill_generated":
        generated = warehouse.table("generated_queries").filter(
            (pl.col("round") == -1) & (pl.col("text").str.strip_chars() != ""))
        position = {d: k for k, d in enumerate(doc_ids)}
        return [(text, position[doc], "") for text, doc in
                generated.select("text", pl.col("doc_id").cast(pl.Utf8)).iter_rows()]
    raise SystemExit(f"unknown variant {variant!r}")


def wise(model, base, alpha: float):
    """A copy of ``model`` with weights (1 - alpha) * base + alpha * model."""
    import copy

    mixed = copy.deepcopy(model)
    own, start = mixed.state_dict(), base.state_dict()
    mixed.load_state_dict({k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v
                           for k, v in own.items()})
    return mixed


def score(model, label: str, tables, results: list[dict]) -> None:
    corpus, queries, qrels = tables
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        row = evaluate_models(Path(folder), "warmup_retriever", corpus, queries, qrels,
                              pair=False, depth=20, weight=0.5)
    row = {"variant": label, **{k: v for k, v in row.items() if not k.startswith("_")}}
    print(json.dumps(row), flush=True)
    results.append(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--variants", default="zero_shot,teacher,ict,teacher_distill")
    parser.add_argument("--base-model", default="default")
    parser.add_argument("--passage-max-length", type=int, default=192)
    parser.add_argument("--ict-docs", type=int, default=1600, help="ICT queries (16 per step)")
    parser.add_argument("--distill-docs", type=int, default=800, help="lists (8 per step)")
    parser.add_argument("--list-length", type=int, default=8)
    parser.add_argument("--teacher-weights", default="0.1,0.2,0.3,0.5,0.7,1.0")
    parser.add_argument("--teacher-weight", default="auto",
                        help="w of the distillation teacher; auto = the `teacher` row best on "
                             "dev (that variant must run first)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--wise", default="0.5", help="WiSE-FT alphas ('' = none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("zero_label.json"))
    args = parser.parse_args()

    import torch

    from jrr_pipeline.ml.evaluation import evaluate
    from jrr_pipeline.ml.precision import autocast_dtype, use_bf16
    from jrr_pipeline.ml.sparse import BM25Index, run_from_search
    from jrr_pipeline.ml.text import passage_texts, text_by_id
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse(path=str(args.home / "warehouse.duckdb"))
    tables = tuple(warehouse.table(t) for t in ("corpus", "queries", "qrels"))
    corpus, queries, qrels = tables
    doc_ids = corpus["doc_id"].cast(pl.Utf8).to_list()
    texts = passage_texts(corpus)
    passages = dict(zip(doc_ids, texts, strict=True))
    titles = corpus["title"].cast(pl.Utf8).fill_null("").to_list()
    bodies = corpus["text"].cast(pl.Utf8).fill_null("").to_list()
    bm25 = BM25Index.build(doc_ids, texts)
    args.dtype = autocast_dtype(use_bf16("auto", torch.device("cpu")))
    base = fresh_retriever(args).eval()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: list[dict] = []
    fusion = None
    distilled = [v for v in variants if v.startswith("teacher_distill")]
    if args.teacher_weight == "auto" and distilled and (
            "teacher" not in variants or variants.index("teacher") > variants.index(distilled[0])):
        raise SystemExit("--teacher-weight auto needs the teacher variant before any "
                         "teacher_distill variant")
    if distilled or "teacher" in variants:
        from jrr_pipeline.ml.generation.fusion_relevance import FusionRelevance

        fusion = FusionRelevance(base, bm25, doc_ids, texts, autocast_dtype=args.dtype,
                                 progress=True)
    qtext = text_by_id(queries)
    alphas = [float(a) for a in args.wise.split(",") if a.strip()]
    for variant in variants:
        started = time.perf_counter()
        if variant == "zero_shot":
            score(base, "zero_shot", tables, results)
            continue
        if variant == "teacher":
            parts = {}
            for split in ("dev", "test"):
                qids = sorted(qrels.filter(pl.col("split") == split)["query_id"]
                              .unique().to_list())
                parts[split] = qids, fusion.parts([qtext[q] for q in qids])
            for w in (float(x) for x in args.teacher_weights.split(",")):
                row = {"variant": f"teacher w={w}"}
                for split, (qids, (dense, lexical)) in parts.items():
                    s = dense + w * lexical
                    top = np.argsort(-s, axis=1)[:, :100]
                    run = run_from_search(qids, [[doc_ids[d] for d in row_] for row_ in top],
                                          np.take_along_axis(s, top, axis=1))
                    for name, value in evaluate(run, qrels, ["nDCG@10", "R@100"],
                                                split=split).items():
                        row[f"{split}_{name}"] = round(value, 4)
                print(json.dumps(row), flush=True)
                results.append(row)
            if args.teacher_weight == "auto":
                best = max((r for r in results if r["variant"].startswith("teacher w=")),
                           key=lambda r: r["dev_nDCG@10"])
                args.teacher_weight = best["variant"].removeprefix("teacher w=")
                print(f"distillation teacher: w = {args.teacher_weight} (best on dev)")
            continue
        if variant == "ict":
            pseudo = sentence_queries(titles, bodies, args.ict_docs, args.seed, remove_p=0.9)
            model = train_ict(args, pseudo, doc_ids, passages, bm25)
        elif variant in distilled:
            pseudo = distillation_queries(variant, args, warehouse, qrels, qtext, doc_ids,
                                          titles, bodies)
            model = train_teacher_distill(args, pseudo, doc_ids, passages, fusion)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        train_s = round(time.perf_counter() - started, 1)
        score(model, variant, tables, results)
        results[-1]["train_s"] = train_s
        for alpha in alphas:
            score(wise(model, base, alpha), f"{variant} wise={alpha}", tables, results)
        args.out.write_text(json.dumps(results, indent=1))
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
