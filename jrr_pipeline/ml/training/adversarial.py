"""AR2: alternate a ranker phase and a retriever phase, refreshing the index between iterations.

Zhang et al. 2022, "Adversarial Retriever-Ranker for Dense Text Retrieval" (ICLR). One iteration:

1. **refresh** (ANCE-style, Xiong et al. 2021): re-encode the corpus with the current retriever,
   rebuild the FAISS index, retrieve each train query's top ``refresh_top_k`` and draw a new list
   (positive + ``list_length - 1`` negatives from the retrieved passages that are not labelled
   positives and not flagged false negatives). Iteration 0 uses the lists it is given (the
   denoised candidates); with ``refresh_every = 0`` every iteration does (the "no refresh" ablation).
2. **ranker phase**: ``ranker_steps`` steps of listwise CE of the reranker (``RerankerListTask``).
3. **retriever phase**: ``retriever_steps`` steps of lambda * adversarial + (1 - lambda) * KL
   against the frozen ranker (``AR2RetrieverTask`` / ``losses.adversarial``), plus, when
   ``retriever_ce_weight`` > 0 (our addition), that weight times the retriever's own listwise CE.

Every phase is a ``train`` call with its own state directory, so a killed run resumes mid-phase
bit-exactly; finished phases and refreshes leave their checkpoint / list files and are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch.distributed as dist

from jrr_pipeline.ml.io import atomic_write_json, replace_dir_atomic
from jrr_pipeline.ml.sampling import sample_without_replacement
from jrr_pipeline.ml.training.config import TrainConfig
from jrr_pipeline.ml.training.distributed import is_main_process
from jrr_pipeline.ml.training.joint import (
    AR2RetrieverTask,
    CandidateList,
    RerankerListTask,
    save_pair,
)
from jrr_pipeline.ml.training.loop import train


@dataclass
class AR2Config:
    """Schedule of the adversarial game (the learning rates are in the phases' TrainConfigs)."""

    iterations: int = field(default=2, metadata={"help": "ranker + retriever phase pairs"})
    ranker_steps: int = field(default=20, metadata={"help": "optimizer steps per ranker phase"})
    retriever_steps: int = field(default=20, metadata={"help": "optimizer steps per retriever phase"})
    lam: float = field(default=0.5, metadata={"help": "lambda: weight of the adversarial term vs KL"})
    retriever_ce_weight: float = field(
        default=0.0, metadata={"help": "our addition: weight of the retriever's listwise CE on the "
                               "labelled positive in the retriever phase (0 = the paper's loss)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both models"})
    refresh_every: int = field(
        default=1, metadata={"help": "refresh the index every N iterations, i.e. every "
                             "N * retriever_steps retriever steps (0 = never: the ablation)"})
    refresh_top_k: int = field(default=30, metadata={"help": "retrieval depth of a refresh"})
    encode_batch_size: int = field(default=64, metadata={"help": "passages per encoding batch"})
    seed: int = field(default=42, metadata={"help": "seed of the refreshed lists' negatives"})

    def __post_init__(self) -> None:
        for name in ("iterations", "ranker_steps", "retriever_steps", "refresh_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"AR2Config: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"AR2Config: lam must be in [0, 1], got {self.lam}")
        if self.retriever_ce_weight < 0:
            raise ValueError(f"AR2Config: retriever_ce_weight must be >= 0, got {self.retriever_ce_weight}")


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


def refreshed_lists(retriever, data: RefreshData, list_length: int, top_k: int, seed: int,
                    batch_size: int = 64, progress: bool = True
                    ) -> tuple[list[CandidateList], dict[str, float]]:
    """Encode the corpus with ``retriever``, index it, draw one list per train query; also evaluate
    the eval queries (nDCG@10, R@100) on the fresh index when ``data`` has them."""
    from jrr_pipeline.ml.index import build_index, search

    started = time.perf_counter()
    retriever.eval()
    emb = retriever.embed(data.passages, kind="passage", batch_size=batch_size, progress=progress)
    index = build_index(emb)
    encode_s = time.perf_counter() - started
    qids = sorted(q for q in data.positives if q in data.query_text)
    q_emb = retriever.embed([data.query_text[q] for q in qids], kind="query", batch_size=batch_size)
    hits, _ = search(index, data.doc_ids, q_emb, top_k)
    text_of = dict(zip(data.doc_ids, data.passages, strict=True))
    rng = np.random.default_rng(seed)
    lists, short = [], 0
    for qid, docs in zip(qids, hits, strict=True):
        banned = set(data.positives[qid]) | data.flagged.get(qid, set())
        pool = [d for d in docs if d and d not in banned]
        if len(pool) < list_length - 1:
            short += 1
            continue
        negatives = sample_without_replacement(pool, list_length - 1, rng, pool_order=True)
        positive = data.positives[qid][int(rng.integers(len(data.positives[qid])))]
        ids = (positive, *negatives)
        lists.append(CandidateList(data.query_text[qid], tuple(text_of[d] for d in ids), qid, ids))
    info = {"refresh_encode_s": encode_s, "refresh_lists": float(len(lists)),
            "refresh_short_lists": float(short)}
    if data.eval_query_text and data.eval_qrels is not None:
        from jrr_pipeline.ml.evaluation import evaluate
        from jrr_pipeline.ml.sparse import run_from_search

        eval_ids = sorted(data.eval_query_text)
        e_emb = retriever.embed([data.eval_query_text[q] for q in eval_ids], kind="query",
                                batch_size=batch_size)
        e_hits, e_scores = search(index, data.doc_ids, e_emb, 100)
        split = data.eval_qrels["split"][0] if data.eval_qrels.height else None
        measures = evaluate(run_from_search(eval_ids, e_hits, e_scores), data.eval_qrels,
                            ["nDCG@10", "R@100"], split=split)
        info.update({f"eval_{k}": v for k, v in measures.items()})
    return lists, info


def _save_lists(path: Path, lists: Sequence[CandidateList], info: dict[str, float]) -> None:
    payload = {"info": info, "lists": [{"query_id": x.query_id, "query": x.query,
                                        "doc_ids": list(x.doc_ids), "passages": list(x.passages)}
                                       for x in lists]}
    atomic_write_json(path, payload)


def _load_lists(path: Path) -> tuple[list[CandidateList], dict[str, float]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    lists = [CandidateList(x["query"], tuple(x["passages"]), x["query_id"], tuple(x["doc_ids"]))
             for x in payload["lists"]]
    return lists, payload["info"]


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


PhaseLog = Callable[[int, str, int, dict[str, float]], None]


RUN_FILE = "ar2_run.json"


def _claim_work_dir(work_dir: Path, config: AR2Config, ranker_train: TrainConfig,
                    retriever_train: TrainConfig) -> None:
    """Finished phases in ``work_dir`` are reused on resume, so they must come from the same run:
    record its configuration there, and refuse a work dir that holds another one."""
    wanted = json.loads(json.dumps({
        "ar2": dataclasses.asdict(config), "ranker_train": dataclasses.asdict(ranker_train),
        "retriever_train": dataclasses.asdict(retriever_train)}, sort_keys=True, default=str))
    path = work_dir / RUN_FILE
    if path.exists():
        held = json.loads(path.read_text(encoding="utf-8"))
        if held != wanted:
            changed = sorted(f"{part}.{key}" for part in wanted for key in wanted[part]
                             if held.get(part, {}).get(key) != wanted[part][key])
            raise ValueError(f"{path}: this AR2 work dir holds a run with a different configuration "
                             f"(changed: {', '.join(changed) or 'layout'}); its finished phases "
                             f"cannot be resumed: remove the folder or choose another work dir")
    elif is_main_process():
        atomic_write_json(path, wanted)
    _barrier()


def train_ar2(retriever, reranker, initial_lists: Sequence[CandidateList], config: AR2Config,
              ranker_train: TrainConfig, retriever_train: TrainConfig, work_dir: Path,
              output_dir: Path, refresh_data: RefreshData | None = None,
              on_log: PhaseLog | None = None,
              on_iteration: Callable[[int, dict[str, float]], None] | None = None,
              progress: bool = True, serving: dict | None = None,
              stop_after: tuple[int, str, int] | None = None) -> dict:
    """Run the AR2 game; returns a summary dict and saves ``output_dir/{retriever,reranker}``.

    ``ranker_train`` / ``retriever_train`` give lr, batch size, bf16 ... of the two phases; their
    ``max_steps`` are set from ``config``. ``on_log(iteration, phase, step, metrics)`` gets every
    logged step, ``on_iteration(iteration, info)`` the refresh figures and phase results.
    ``stop_after=(iteration, phase, steps)`` is a test hook that stops that phase early, as a kill
    would (returns ``{"completed": False}``).
    """
    from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if config.refresh_every and refresh_data is None:
        raise ValueError("train_ar2: refresh_every > 0 needs refresh_data (corpus and train queries)")
    _claim_work_dir(work_dir, config, ranker_train, retriever_train)
    started = time.perf_counter()
    lists = list(initial_lists)
    list_length = len(lists[0].passages) if lists else 0
    summary: dict = {"iterations": [], "completed": False}
    for it in range(config.iterations):
        it_dir = work_dir / f"iteration-{it:03d}"
        info: dict[str, float] = {}
        refresh = bool(config.refresh_every) and it > 0 and it % config.refresh_every == 0
        lists_file = it_dir / "lists.json"
        if refresh:
            if not lists_file.exists() and is_main_process():
                new_lists, info = refreshed_lists(
                    retriever, refresh_data, list_length, config.refresh_top_k,
                    config.seed + it, config.encode_batch_size, progress)
                _save_lists(lists_file, new_lists, info)
            _barrier()
            lists, info = _load_lists(lists_file)
            if not lists:
                raise ValueError(f"AR2 refresh {it}: no train query has {list_length - 1} "
                                 f"retrievable negatives in the top {config.refresh_top_k}")
        info = dict(info, refreshed=float(refresh), lists=float(len(lists)))
        phases = (
            ("ranker", RerankerListTask(reranker), ranker_train, config.ranker_steps),
            ("retriever", AR2RetrieverTask(retriever, reranker, config.lam, config.temperature,
                                           retriever_ce_weight=config.retriever_ce_weight),
             retriever_train, config.retriever_steps),
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
