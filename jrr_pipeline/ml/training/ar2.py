"""AR2: alternate a ranker phase and a retriever phase, refreshing the index between iterations.

Zhang et al. 2022, "Adversarial Retriever-Ranker for Dense Text Retrieval" (ICLR). One iteration:

1. **refresh** (ANCE-style, Xiong et al. 2021): re-encode the corpus with the current retriever,
   rebuild the FAISS index, retrieve each train query's top ``ar2_refresh_top_k``, denoise them
   with the current ranker (RocketQA's threshold ``ar2_refresh_tau_neg`` on the probability of
   beating the positive) and draw one list per labelled positive from what is kept (labelled
   positives and the warm-up's flagged false negatives are never negatives). Iteration 0 uses the
   lists it is given (the denoised candidates); with ``ar2_refresh_every = 0`` every iteration
   does (the "no refresh" ablation).
2. **ranker phase**: ``ar2_ranker_steps`` steps of listwise CE of the reranker (``RerankerListTask``).
3. **retriever phase**: ``ar2_retriever_steps`` steps of the adversarial term + lambda *
   KL(p_ranker || p_retriever) against the frozen ranker (``AR2RetrieverTask`` /
   ``losses.adversarial``), plus, when ``retriever_ce_weight`` > 0 (our addition), that weight
   times the retriever's own listwise CE.

Every phase is a ``train`` call with its own state directory, so a killed run resumes mid-phase
bit-exactly; finished phases and refreshes leave their checkpoint / list files and are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch import Tensor

from jrr_pipeline.ml.io import atomic_write_json, replace_dir_atomic
from jrr_pipeline.ml.losses import ListwiseCELoss
from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.precision import autocast_dtype, use_bf16
from jrr_pipeline.ml.sampling import sample_without_replacement
from jrr_pipeline.ml.settings import JointSettings
from jrr_pipeline.ml.training.distributed import is_main_process, training_device
from jrr_pipeline.ml.training.lists import (
    CandidateList,
    prepare_joint,
    reranker_list_scores,
    retriever_list_scores,
    save_pair,
    serving_fields,
)
from jrr_pipeline.ml.training.loop import train


class RerankerListTask:
    """AR2's ranker phase: listwise CE of the reranker over lists retrieved by the current
    retriever (positive at column 0)."""

    def __init__(self, reranker: CrossEncoderReranker, chunk_pairs: int = 0) -> None:
        self.reranker = reranker
        self.chunk_pairs = chunk_pairs
        self.ce = ListwiseCELoss()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reranker": self.reranker}

    def loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        with torch.no_grad():
            acc = float((s_ce.argmax(1) == 0).float().mean())
        return self.ce(s_ce), {"reranker_acc": acc}

    def save(self, output_dir: Path) -> None:
        self.reranker.save_pretrained(output_dir)


class AR2RetrieverTask:
    """AR2's retriever phase: ``AR2RetrieverLoss`` against the frozen ranker over the same lists.

    ``retriever_ce_weight`` w > 0 (our addition, as in ``RocketQAv2Task``; 0 = the paper) adds
    w * CE(softmax(s_de), p+), the retriever's own listwise CE on the labelled positive: the
    adversarial and KL terms only see the ranker, which on a small train set is a weaker ranker
    than the retriever itself."""

    def __init__(self, retriever: DenseRetriever, reranker: CrossEncoderReranker, lam: float = 1.0,
                 temperature: float = 1.0, chunk_pairs: int = 0,
                 retriever_ce_weight: float = 0.0, reward: str = "listwise") -> None:
        from jrr_pipeline.ml.losses.adversarial import AR2RetrieverLoss

        if retriever_ce_weight < 0:
            raise ValueError(f"AR2RetrieverTask: retriever_ce_weight must be >= 0, got {retriever_ce_weight}")
        self.retriever = retriever
        self.reranker = reranker
        self.chunk_pairs = chunk_pairs
        self.loss_fn = AR2RetrieverLoss(lam=lam, temperature=temperature, reward=reward)
        self.retriever_ce_weight = retriever_ce_weight
        self.ce = ListwiseCELoss()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"retriever": self.retriever}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        """The ranker: used as the teacher, trained only in the ranker phase."""
        return {"reranker": self.reranker}

    def loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        self.reranker.eval()
        with torch.no_grad():
            s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        s_de = retriever_list_scores(self.retriever, batch)
        loss = self.loss_fn(s_de, s_ce)
        metrics = dict(self.loss_fn.last_terms)
        if self.retriever_ce_weight > 0:
            retriever_ce = self.ce(s_de)
            loss = loss + self.retriever_ce_weight * retriever_ce
            metrics["retriever_ce_loss"] = float(retriever_ce.detach())
        with torch.no_grad():
            acc = float((s_de.argmax(1) == 0).float().mean())
        return loss, {**metrics, "retriever_acc": acc}

    def save(self, output_dir: Path) -> None:
        self.retriever.save_pretrained(output_dir)


@dataclass
class RefreshData:
    """What a refresh needs: the corpus, train queries with their positives, and the passages the
    warm-up reranker flagged as likely false negatives (never drawn as negatives)."""

    doc_ids: list[str]
    passages: list[str]
    query_text: dict[str, str]
    positives: dict[str, list[str]]
    flagged: dict[str, set[str]] = field(default_factory=dict)
    eval_query_text: dict[str, str] = field(default_factory=dict)
    eval_qrels: pl.DataFrame | None = None


def refreshed_lists(retriever, reranker, data: RefreshData, list_length: int, top_k: int,
                    seed: int, tau_neg: float = 0.1, batch_size: int = 64, progress: bool = True,
                    autocast_dtype=None) -> tuple[list[CandidateList], dict[str, float]]:
    """Encode the corpus with ``retriever``, index it, retrieve each train query's top ``top_k``,
    denoise them with the current ``reranker`` (RocketQA: a passage stays a negative only if its
    probability of beating the query's positive, sigmoid(s - s_positive), is below ``tau_neg``)
    and draw one list per labelled positive. Also evaluates the eval queries (nDCG@10, R@100) on
    the fresh index when ``data`` has them. Returns the lists and the refresh's figures."""
    from jrr_pipeline.ml.index import build_index, search

    started = time.perf_counter()
    retriever.eval()
    emb = retriever.embed(data.passages, kind="passage", batch_size=batch_size, progress=progress,
                          autocast_dtype=autocast_dtype)
    index = build_index(emb)
    encode_s = time.perf_counter() - started
    qids = sorted(q for q in data.positives if q in data.query_text)
    q_emb = retriever.embed([data.query_text[q] for q in qids], kind="query",
                            batch_size=batch_size, autocast_dtype=autocast_dtype)
    hits, _ = search(index, data.doc_ids, q_emb, top_k)
    text_of = dict(zip(data.doc_ids, data.passages, strict=True))
    retrieved = {qid: [d for d in docs if d not in set(data.positives[qid])
                       | data.flagged.get(qid, set())]
                 for qid, docs in zip(qids, hits, strict=True)}
    started = time.perf_counter()
    pools, removed = _denoised_pools(reranker, data, retrieved, text_of, tau_neg, batch_size,
                                     progress, autocast_dtype)
    rng = np.random.default_rng(seed)
    lists, short, topped_up = [], 0, 0
    for qid in qids:
        # too few kept: top up with the removed passages the ranker doubts least (counted)
        extra = removed[qid][: max(list_length - 1 - len(pools[qid]), 0)]
        topped_up += len(extra)
        pool = pools[qid] + extra
        if len(pool) < list_length - 1:
            short += 1
            continue
        banned = frozenset(data.positives[qid]) | frozenset(data.flagged.get(qid, set()))
        for positive in data.positives[qid]:
            negatives = sample_without_replacement(pool, list_length - 1, rng, pool_order=True)
            ids = (positive, *negatives)
            lists.append(CandidateList(data.query_text[qid], tuple(text_of[d] for d in ids), qid,
                                       ids, banned))
    scored = sum(len(v) for v in retrieved.values())
    n_removed = sum(len(v) for v in removed.values())
    info = {"refresh_encode_s": encode_s, "refresh_denoise_s": time.perf_counter() - started,
            "refresh_lists": float(len(lists)), "refresh_short_queries": float(short),
            "refresh_scored": float(scored), "refresh_removed": float(n_removed),
            "refresh_removed_share": n_removed / scored if scored else 0.0,
            "refresh_topped_up": float(topped_up)}
    if data.eval_query_text and data.eval_qrels is not None:
        info.update(_evaluate_refresh(retriever, index, data, batch_size, autocast_dtype))
    return lists, info


def _denoised_pools(reranker, data: RefreshData, retrieved: dict[str, list[str]],
                    text_of: dict[str, str], tau_neg: float, batch_size: int, progress: bool,
                    autocast_dtype) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each query's retrieved passages (rank order) that the ranker keeps as negatives, and the
    ones it removed as likely false negatives (least likely first)."""
    pairs, owners = [], []
    for qid, docs in retrieved.items():
        for doc in [*data.positives[qid], *docs]:
            pairs.append((data.query_text[qid], text_of[doc]))
            owners.append((qid, doc))
    scores = reranker.predict(pairs, batch_size=batch_size, progress=progress,
                              autocast_dtype=autocast_dtype)
    score_of = dict(zip(owners, scores.tolist(), strict=True))
    pools, removed = {}, {}
    for qid, docs in retrieved.items():
        best = max(score_of[(qid, p)] for p in data.positives[qid])
        # sigmoid(s - s_positive), written with tanh so a large gap cannot overflow
        prob = {d: 0.5 * (1.0 + math.tanh((score_of[(qid, d)] - best) / 2)) for d in docs}
        pools[qid] = [d for d in docs if prob[d] < tau_neg]
        removed[qid] = sorted((d for d in docs if prob[d] >= tau_neg), key=prob.__getitem__)
    return pools, removed


def _evaluate_refresh(retriever, index, data: RefreshData, batch_size: int,
                      autocast_dtype) -> dict[str, float]:
    """nDCG@10 and R@100 of the refreshed index on the eval queries (monitoring only)."""
    from jrr_pipeline.ml.evaluation import evaluate
    from jrr_pipeline.ml.index import search
    from jrr_pipeline.ml.sparse import run_from_search

    eval_ids = sorted(data.eval_query_text)
    e_emb = retriever.embed([data.eval_query_text[q] for q in eval_ids], kind="query",
                            batch_size=batch_size, autocast_dtype=autocast_dtype)
    e_hits, e_scores = search(index, data.doc_ids, e_emb, 100)
    split = data.eval_qrels["split"][0] if data.eval_qrels.height else None
    measures = evaluate(run_from_search(eval_ids, e_hits, e_scores), data.eval_qrels,
                        ["nDCG@10", "R@100"], split=split)
    return {f"eval_{k}": v for k, v in measures.items()}


def _save_lists(path: Path, lists: Sequence[CandidateList], info: dict[str, float]) -> None:
    payload = {"info": info, "lists": [{"query_id": x.query_id, "query": x.query,
                                        "doc_ids": list(x.doc_ids), "passages": list(x.passages),
                                        "positive_ids": sorted(x.positive_ids)}
                                       for x in lists]}
    atomic_write_json(path, payload)


def _load_lists(path: Path) -> tuple[list[CandidateList], dict[str, float]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    lists = [CandidateList(x["query"], tuple(x["passages"]), x["query_id"], tuple(x["doc_ids"]),
                           frozenset(x.get("positive_ids", ())))
             for x in payload["lists"]]
    return lists, payload["info"]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


PhaseLog = Callable[[int, str, int, dict[str, float]], None]


RUN_FILE = "ar2_run.json"


def _claim_work_dir(work_dir: Path, settings: JointSettings) -> None:
    """Finished phases in ``work_dir`` are reused on resume, so they must come from the same run:
    record its settings there, and refuse a work dir that holds another one."""
    wanted = json.loads(json.dumps(settings.to_dict(), sort_keys=True, default=str))
    path = work_dir / RUN_FILE
    if path.exists():
        held = json.loads(path.read_text(encoding="utf-8"))
        if held != wanted:
            changed = sorted(k for k in wanted if held.get(k) != wanted[k]) or ["layout"]
            raise ValueError(f"{path}: this AR2 work dir holds a run with different settings "
                             f"(changed: {', '.join(changed)}); its finished phases cannot be "
                             f"resumed: remove the folder or choose another work dir")
    elif is_main_process():
        atomic_write_json(path, wanted)
    _barrier()


def train_ar2(retriever, reranker, initial_lists: Sequence[CandidateList], settings: JointSettings,
              work_dir: Path, output_dir: Path, refresh_data: RefreshData | None = None,
              on_log: PhaseLog | None = None,
              on_iteration: Callable[[int, dict[str, float]], None] | None = None,
              progress: bool = True, serving: dict | None = None,
              stop_after: tuple[int, str, int] | None = None) -> dict:
    """Run the AR2 game of ``settings`` (the ``ar2_*`` knobs); returns a summary dict and saves
    ``output_dir/{retriever,reranker}``.

    The ranker phases train at ``reranker_lr``, the retriever phases at ``retriever_lr``; the
    other loop knobs (batch size, bf16, ...) are shared. ``on_log(iteration, phase, step,
    metrics)`` gets every logged step, ``on_iteration(iteration, info)`` the refresh figures and
    phase results. ``stop_after=(iteration, phase, steps)`` is a test hook that stops that phase
    early, as a kill would (returns ``{"completed": False}``).
    """

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if settings.ar2_refresh_every and refresh_data is None:
        raise ValueError("train_ar2: ar2_refresh_every > 0 needs refresh_data (corpus and train "
                         "queries)")
    _claim_work_dir(work_dir, settings)
    ranker_train = settings.train_config(lr=settings.reranker_lr)
    retriever_train = settings.train_config()
    started = time.perf_counter()
    lists = list(initial_lists)
    list_length = len(lists[0].passages) if lists else 0
    summary: dict = {"iterations": [], "completed": False}
    for it in range(settings.ar2_iterations):
        it_dir = work_dir / f"iteration-{it:03d}"
        info: dict[str, float] = {}
        refresh = (bool(settings.ar2_refresh_every) and it > 0
                   and it % settings.ar2_refresh_every == 0)
        lists_file = it_dir / "lists.json"
        if refresh:
            if not lists_file.exists() and is_main_process():
                new_lists, info = refreshed_lists(
                    retriever, reranker, refresh_data, list_length, settings.ar2_refresh_top_k,
                    settings.seed + it, settings.ar2_refresh_tau_neg, settings.encode_batch_size,
                    progress, autocast_dtype(use_bf16(settings.bf16, training_device())))
                _save_lists(lists_file, new_lists, info)
            _barrier()
            lists, info = _load_lists(lists_file)
            if not lists:
                raise ValueError(f"AR2 refresh {it}: no train query has {list_length - 1} "
                                 f"retrievable negatives in the top {settings.ar2_refresh_top_k}")
        info = dict(info, refreshed=float(refresh), lists=float(len(lists)))
        phases = (
            ("ranker", RerankerListTask(reranker, settings.chunk_pairs), ranker_train,
             settings.ar2_ranker_steps),
            ("retriever", AR2RetrieverTask(retriever, reranker, settings.ar2_lambda,
                                           settings.kl_temperature, settings.chunk_pairs,
                                           retriever_ce_weight=settings.retriever_ce_weight,
                                           reward=settings.ar2_reward),
             retriever_train, settings.ar2_retriever_steps),
        )
        for phase, task, base, steps in phases:
            out = it_dir / phase
            if (out / "config.json").exists():  # a finished phase: continue from its checkpoint
                loaded = (CrossEncoderReranker if phase == "ranker" else DenseRetriever).from_pretrained(
                    str(out))
                target = reranker if phase == "ranker" else retriever
                target.load_state_dict(loaded.state_dict())
                continue
            phase_cfg = dataclasses.replace(base, max_steps=steps, seed=base.seed + 1000 * it)

            def log(step, metrics, it=it, phase=phase):
                if on_log is not None:
                    on_log(it, phase, step, metrics)

            stop = stop_after[2] if stop_after and stop_after[:2] == (it, phase) else None
            result = train(task, lists, phase_cfg, out, state_dir=it_dir / f"{phase}-state",
                           on_log=log, progress=progress, stop_after_steps=stop)
            if not result.completed:
                return {**summary, "completed": False}
            info[f"{phase}_loss"] = float(result.final_loss or 0.0)
            info[f"{phase}_s"] = result.wall_s
        summary["iterations"].append(info)
        if on_iteration is not None and is_main_process():
            on_iteration(it, info)
    if is_main_process():
        replace_dir_atomic(Path(output_dir),
                           lambda d: save_pair(retriever, reranker, Path(d), serving))
    _barrier()
    summary.update(completed=True, wall_s=time.perf_counter() - started)
    return summary


def refresh_data_from(tables: dict[str, pl.DataFrame], eval_split: str | None) -> RefreshData:
    """RefreshData: train positives from qrels, pseudo positives of the candidates as flagged."""
    from jrr_pipeline.ml.index import passage_texts

    queries, corpus, qrels, candidates = (tables[t] for t in ("queries", "corpus", "qrels",
                                                              "candidates"))
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    train_pos = qrels.filter((pl.col("split") == "train") & (pl.col("relevance") > 0))
    positives: dict[str, list[str]] = {}
    for qid, did in train_pos.select("query_id", "doc_id").unique(maintain_order=True).iter_rows():
        positives.setdefault(qid, []).append(did)
    flagged: dict[str, set[str]] = {}
    for qid, did, source in candidates.filter(pl.col("label") == 1).select(
            "query_id", "doc_id", "source").iter_rows():
        if source != "qrels":
            flagged.setdefault(qid, set()).add(did)
    eval_text, eval_qrels = {}, None
    if eval_split:
        eval_qrels = qrels.filter(pl.col("split") == eval_split)
        eval_text = {q: text[q] for q in eval_qrels["query_id"].unique().to_list() if q in text}
    return RefreshData(corpus["doc_id"].to_list(), passage_texts(corpus), text, positives,
                       flagged, eval_text, eval_qrels)


def run_ar2(spec) -> dict:
    """AR2 from a run file (``ml.training.launch.RunSpec``); returns the result dict."""
    from jrr_pipeline.ml.training.distributed import (
        cleanup_distributed,
        init_distributed,
        training_device,
    )

    settings = spec.settings
    tables, lists, retriever, reranker = prepare_joint(spec)
    refresh = refresh_data_from(tables, spec.eval_split) if settings.ar2_refresh_every else None
    write = spec.log_writer()
    created_group = init_distributed(training_device())  # refreshes sync ranks between phases
    try:
        summary = train_ar2(
            retriever, reranker, lists, settings, spec.state_dir, spec.output_dir,
            refresh_data=refresh,
            on_log=lambda it, phase, step, m: write({"iteration": it, "phase": phase,
                                                     "step": step, "metrics": m}),
            on_iteration=lambda it, info: write({"iteration": it, "phase": "iteration",
                                                 "step": 0, "metrics": info}),
            progress=spec.progress, serving=serving_fields(settings))
    finally:
        if created_group:
            cleanup_distributed()
    steps = settings.ar2_iterations * (settings.ar2_ranker_steps + settings.ar2_retriever_steps)
    return {"method": "ar2", "lists": len(lists), "steps": steps, "wall_s": summary["wall_s"],
            "iterations": summary["iterations"]}
