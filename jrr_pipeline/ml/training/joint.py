"""RocketQAv2 joint training of the retriever and the reranker over shared candidate lists.

Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
Re-ranking" (EMNLP). For query q and its list [p+, p1-, ..., p(L-1)-] (positive first):

    s_de(q, p) = <E(q), E(p)> / tau          (retriever, over the list only)
    s_ce(q, p) = reranker logit of [q; p]
    L = CE(softmax(s_ce), p+)  +  KL(softmax(s_de) || softmax(s_ce))

``dynamic`` (the paper): both models get gradients from the KL term, so the reranker is also pulled
towards the retriever while it learns from the labels. ``static`` (the ablation): the reranker is
frozen, its scores are a fixed teacher and only the KL term trains the retriever.

``retriever_ce_weight`` w > 0 (our addition; 0 here, 1.0 in the pipeline's ``joint_models``) adds
w * CE(softmax(s_de), p+): the retriever also learns from the label, which matters when the
reranker is still a weaker teacher than the retriever it is distilled into. With ``retriever_in_batch`` that CE runs over every passage
of the batch (the other queries' lists as extra negatives, as in DPR's in-batch training) instead of
the query's own list; the KL term always stays on the query's own list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from jrr_pipeline.ml.losses import ListwiseCELoss, ListwiseKLLoss
from jrr_pipeline.ml.modeling import CrossEncoderReranker, DenseRetriever
from jrr_pipeline.ml.text import passage_texts, text_by_id

MODES = ("dynamic", "static")


@dataclass(frozen=True)
class CandidateList:
    """A query and its list, the labelled positive first (ids kept for refreshes and reports)."""

    query: str
    passages: tuple[str, ...]
    query_id: str = ""
    doc_ids: tuple[str, ...] = ()


def build_candidate_lists(queries: pl.DataFrame, corpus: pl.DataFrame, candidates: pl.DataFrame,
                          list_length: int) -> list[CandidateList]:
    """One list per query of ``candidates`` (label 1 rows first, then label 0 in table order),
    cut to ``list_length``; queries whose list is shorter are dropped (batched losses need equal
    lengths), as are queries without a positive."""
    text = text_by_id(queries)
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    ordered = candidates.with_row_index("row").sort("query_id", "label", "row",
                                                     descending=[False, True, False])
    lists = []
    for (qid,), group in ordered.group_by(["query_id"], maintain_order=True):
        labels = group["label"].to_list()
        if not labels or labels[0] != 1:
            continue
        positive = group["doc_id"][0]
        negatives = group.filter(pl.col("label") == 0)["doc_id"].to_list()
        docs = [positive, *negatives][:list_length]
        if len(docs) == list_length:
            lists.append(CandidateList(text[qid], tuple(passages[d] for d in docs), qid, tuple(docs)))
    return lists


def _list_length(batch: Sequence[CandidateList], owner: str) -> int:
    size = {len(x.passages) for x in batch}
    if len(size) != 1:
        raise ValueError(f"{owner}: lists of different lengths in one batch: {sorted(size)}")
    return size.pop()


def retriever_batch_scores(retriever: DenseRetriever, batch: Sequence[CandidateList]) -> Tensor:
    """s_de of every query against every passage of the batch, [B, B*L]: query i's own list is
    columns i*L .. i*L+L-1 (``own_list_scores`` cuts them out)."""
    _list_length(batch, "retriever_batch_scores")
    q = retriever.encode_queries(retriever.tokenize_queries([x.query for x in batch]))
    p = retriever.encode_passages(retriever.tokenize_passages([t for x in batch for t in x.passages]))
    return q.float() @ p.float().T / retriever.config.temperature


def own_list_scores(s_all: Tensor, length: int) -> Tensor:
    """[B, B*L] batch scores -> [B, L], each query's scores over its own list."""
    b = s_all.shape[0]
    rows = torch.arange(b, device=s_all.device)
    return s_all.view(b, b, length)[rows, rows]


def retriever_list_scores(retriever: DenseRetriever, batch: Sequence[CandidateList]) -> Tensor:
    """s_de over each query's own list, [B, L]."""
    return own_list_scores(retriever_batch_scores(retriever, batch), len(batch[0].passages))


def in_batch_positive_mask(batch: Sequence[CandidateList]) -> Tensor:
    """[B, B*L] True where another list holds query i's labelled positive (same doc id, or the same
    text when ids are missing): those columns must not count as its negatives."""
    keys = [x.doc_ids or x.passages for x in batch]
    flat = [k for key in keys for k in key]
    mask = torch.tensor([[other == key[0] for other in flat] for key in keys], dtype=torch.bool)
    rows = torch.arange(len(keys))
    mask[rows, rows * len(keys[0])] = False
    return mask


def reranker_list_scores(reranker: CrossEncoderReranker, batch: Sequence[CandidateList],
                         chunk_pairs: int = 0) -> Tensor:
    """s_ce of every (query, passage) pair of each list, [B, L]; ``chunk_pairs`` > 0 runs the
    cross-encoder over that many pairs at a time (same result, smaller activation peak at
    inference; with a graph the chunks' activations are all kept until backward)."""
    length = _list_length(batch, "reranker_list_scores")
    pairs_q = [x.query for x in batch for _ in x.passages]
    pairs_p = [t for x in batch for t in x.passages]
    size = chunk_pairs if chunk_pairs > 0 else len(pairs_q)
    parts = [reranker(reranker.tokenize(pairs_q[i:i + size], pairs_p[i:i + size]))
             for i in range(0, len(pairs_q), size)]
    return torch.cat(parts).view(len(batch), length)


class RocketQAv2Task:
    """The joint task for ``ml.training.train``: modules ``retriever`` and ``reranker``."""

    def __init__(self, retriever: DenseRetriever, reranker: CrossEncoderReranker,
                 mode: str = "dynamic", kl_temperature: float = 1.0, chunk_pairs: int = 0,
                 serving: dict | None = None, grad_cache_chunk: int = 0,
                 retriever_ce_weight: float = 0.0, retriever_in_batch: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"RocketQAv2Task: mode must be one of {MODES}, got {mode!r}")
        if retriever_ce_weight < 0:
            raise ValueError(f"RocketQAv2Task: retriever_ce_weight must be >= 0, got {retriever_ce_weight}")
        if retriever_in_batch and retriever_ce_weight == 0:
            raise ValueError("RocketQAv2Task: retriever_in_batch needs retriever_ce_weight > 0 "
                             "(it widens the retriever's CE term to the whole batch)")
        self.retriever = retriever
        self.reranker = reranker
        self.mode = mode
        self.chunk_pairs = chunk_pairs
        self.serving = dict(serving or {})
        self.grad_cache_chunk = grad_cache_chunk
        # Not in the paper (0 = RocketQAv2): the retriever's own listwise CE on the labelled
        # positive, so it still learns when the reranker teacher is weaker than it is.
        self.retriever_ce_weight = retriever_ce_weight
        self.retriever_in_batch = retriever_in_batch
        self.backward_done = grad_cache_chunk > 0
        self.ce = ListwiseCELoss()
        self.kl = ListwiseKLLoss(temperature=kl_temperature, detach_teacher=mode == "static")
        if mode == "static":
            self.reranker.requires_grad_(False)

    def modules(self) -> dict[str, torch.nn.Module]:
        if self.mode == "static":
            return {"retriever": self.retriever}
        return {"retriever": self.retriever, "reranker": self.reranker}

    def scores(self, batch: Sequence[CandidateList]) -> tuple[Tensor, Tensor]:
        """(s_de, s_ce), each [B, L]."""
        s_de, s_ce, _ = self._scores(batch)
        return s_de, s_ce

    def _scores(self, batch: Sequence[CandidateList]) -> tuple[Tensor, Tensor, Tensor]:
        length = _list_length(batch, "RocketQAv2Task")
        s_all = retriever_batch_scores(self.retriever, batch)
        if self.mode == "static":
            self.reranker.eval()
            with torch.no_grad():
                s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        else:
            s_ce = reranker_list_scores(self.reranker, batch, self.chunk_pairs)
        return own_list_scores(s_all, length), s_ce, s_all

    def loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        if self.grad_cache_chunk > 0:
            return self._grad_cache_loss(batch)
        s_de, s_ce, s_all = self._scores(batch)
        return self._combine(s_de, s_ce, self._in_batch(s_all, batch))

    def _in_batch(self, s_all: Tensor, batch: Sequence[CandidateList]) -> Tensor | None:
        """The retriever's in-batch scores with other copies of each positive masked, or None."""
        if not self.retriever_in_batch:
            return None
        return s_all.masked_fill(in_batch_positive_mask(batch).to(s_all.device), float("-inf"))

    def _combine(self, s_de: Tensor, s_ce: Tensor,
                 s_in_batch: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """CE + KL (+ w * the retriever's CE, over ``s_in_batch`` [B, B*L] when given, whose
        positive for query i is column i*L; else over its own list)."""
        kl = self.kl(s_de, s_ce)
        ce = self.ce(s_ce)
        total = kl if self.mode == "static" else ce + kl
        metrics = {}
        if self.retriever_ce_weight > 0:
            if s_in_batch is not None:
                target = torch.arange(s_de.shape[0], device=s_de.device) * s_de.shape[1]
                retriever_ce = self.ce(s_in_batch, target)
            else:
                retriever_ce = self.ce(s_de)
            total = total + self.retriever_ce_weight * retriever_ce
            metrics["retriever_ce_loss"] = float(retriever_ce.detach())
        with torch.no_grad():
            metrics |= {"kl": float(kl), "ce_loss": float(ce),
                       "retriever_acc": float((s_de.argmax(1) == 0).float().mean()),
                       "reranker_acc": float((s_ce.argmax(1) == 0).float().mean())}
        return total, metrics

    def _grad_cache_loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        """The same loss and gradients with GradCache: queries, passages and (dynamic) reranker
        pairs are encoded ``grad_cache_chunk`` at a time, so activation memory is that of one
        chunk; backward happens here (``backward_done``), the loop only steps the optimizer."""
        from jrr_pipeline.ml.training.gradcache import Encoder, chunked, grad_cache_backward

        length = _list_length(batch, "RocketQAv2Task")
        r, n = self.retriever, self.grad_cache_chunk
        pairs = [(x.query, t) for x in batch for t in x.passages]
        encoders = [
            Encoder(lambda c: r.encode_queries(r.tokenize_queries(list(c))),
                    chunked([x.query for x in batch], n)),
            Encoder(lambda c: r.encode_passages(r.tokenize_passages(list(c))),
                    chunked([t for x in batch for t in x.passages], n)),
        ]
        fixed_ce = None
        if self.mode == "static":
            self.reranker.eval()
            with torch.no_grad():
                fixed_ce = reranker_list_scores(self.reranker, batch, n)
        else:
            encoders.append(Encoder(
                lambda c: self.reranker(self.reranker.tokenize([q for q, _ in c], [p for _, p in c]))
                .view(-1, 1), chunked(pairs, n)))
        out: dict[str, float] = {}

        def loss_fn(reps: list[Tensor]) -> Tensor:
            s_all = reps[0].float() @ reps[1].float().T / r.config.temperature
            s_ce = fixed_ce if fixed_ce is not None else reps[2].view(len(batch), length)
            total, metrics = self._combine(own_list_scores(s_all, length), s_ce,
                                           self._in_batch(s_all, batch))
            out.update(metrics)
            return total

        loss = grad_cache_backward(encoders, loss_fn)
        return loss, out

    def save(self, output_dir: Path) -> None:
        """``output_dir/retriever`` and ``output_dir/reranker`` (HF / sentence-transformers folders)."""
        save_pair(self.retriever, self.reranker, Path(output_dir), self.serving)


def save_pair(retriever: DenseRetriever, reranker: CrossEncoderReranker, output_dir: Path,
              serving: dict | None = None) -> None:
    """``output_dir/retriever`` (with the ``serving`` config overrides) and ``output_dir/reranker``."""
    from jrr_pipeline.ml.training.warmup import config_overrides

    output_dir.mkdir(parents=True)
    with config_overrides(retriever.config, dict(serving or {})):
        retriever.save_pretrained(output_dir / "retriever")
    reranker.save_pretrained(output_dir / "reranker")


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

    def __init__(self, retriever: DenseRetriever, reranker: CrossEncoderReranker, lam: float = 0.5,
                 temperature: float = 1.0, chunk_pairs: int = 0,
                 retriever_ce_weight: float = 0.0) -> None:
        from jrr_pipeline.ml.losses.adversarial import AR2RetrieverLoss

        if retriever_ce_weight < 0:
            raise ValueError(f"AR2RetrieverTask: retriever_ce_weight must be >= 0, got {retriever_ce_weight}")
        self.retriever = retriever
        self.reranker = reranker
        self.chunk_pairs = chunk_pairs
        self.loss_fn = AR2RetrieverLoss(lam=lam, temperature=temperature)
        self.retriever_ce_weight = retriever_ce_weight
        self.ce = ListwiseCELoss()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"retriever": self.retriever}

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


def prepare_joint(spec) -> tuple[dict[str, pl.DataFrame], list[CandidateList], DenseRetriever,
                                 CrossEncoderReranker]:
    """Tables, candidate lists and the two starting models of a joint run file
    (``ml.training.launch.RunSpec``), with the settings' training lengths applied."""
    from jrr_pipeline.ml.training.loop import seed_everything

    settings = spec.settings
    tables = spec.tables()
    lists = build_candidate_lists(tables["queries"], tables["corpus"], tables["candidates"],
                                  settings.list_length)
    if not lists:
        raise ValueError(f"{spec.data['candidates']}: no query has a positive and "
                         f"{settings.list_length - 1} negatives (list_length "
                         f"{settings.list_length})")
    seed_everything(settings.seed)
    retriever = DenseRetriever.from_pretrained(spec.models["retriever"])
    reranker = CrossEncoderReranker.from_pretrained(spec.models["reranker"])
    retriever.config.passage_max_length = settings.passage_max_length
    reranker.config.max_length = settings.reranker_max_length
    return tables, lists, retriever, reranker


def serving_fields(settings) -> dict:
    """Retriever config fields the saved joint checkpoint gets instead of the training ones."""
    length = settings.index_passage_max_length
    return {"passage_max_length": length} if length else {}


def run_rocketqav2(spec) -> dict:
    """RocketQAv2 joint training from a run file; returns the result dict."""
    from jrr_pipeline.ml.training.loop import train

    settings = spec.settings
    _tables, lists, retriever, reranker = prepare_joint(spec)
    train_cfg = settings.train_config()
    task = RocketQAv2Task(retriever, reranker, mode=settings.mode,
                          kl_temperature=settings.kl_temperature, chunk_pairs=settings.chunk_pairs,
                          serving=serving_fields(settings),
                          grad_cache_chunk=settings.grad_cache_chunk,
                          retriever_ce_weight=settings.retriever_ce_weight,
                          retriever_in_batch=settings.retriever_in_batch)
    write = spec.log_writer()
    outcome = train(task, lists, train_cfg, spec.output_dir, state_dir=spec.state_dir,
                    progress=spec.progress,
                    module_lr_multipliers={"reranker": settings.reranker_lr / train_cfg.lr},
                    on_log=lambda step, m: write({"iteration": None, "phase": "joint",
                                                  "step": step, "metrics": m}))
    if not outcome.completed:
        raise RuntimeError("joint training stopped before its last step")
    return {"method": "rocketqav2", "lists": len(lists), "steps": outcome.step,
            "wall_s": outcome.wall_s, "bf16": outcome.bf16, "world_size": outcome.world_size,
            "final_loss": outcome.final_loss, "resumed_from_step": outcome.resumed_from_step}
