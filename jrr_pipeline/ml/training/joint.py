"""RocketQAv2 joint training of the retriever and the reranker over shared candidate lists.

Ren et al. 2021, "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
Re-ranking" (EMNLP). For query q and its list [p+, p1-, ..., p(L-1)-] (positive first):

    s_de(q, p) = <E(q), E(p)> / tau          (retriever, over the list only)
    s_ce(q, p) = reranker logit of [q; p]
    L = CE(softmax(s_ce), p+)  +  KL(softmax(s_de) || softmax(s_ce))

``dynamic`` (the paper): both models get gradients from the KL term, so the reranker is also pulled
towards the retriever while it learns from the labels. ``static`` (the ablation): the reranker is
frozen, its scores are a fixed teacher and only the KL term trains the retriever.
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

MODES = ("dynamic", "static")


@dataclass(frozen=True)
class CandidateList:
    """A query and its list, the labelled positive first."""

    query: str
    passages: tuple[str, ...]


def build_candidate_lists(queries: pl.DataFrame, corpus: pl.DataFrame, candidates: pl.DataFrame,
                          list_length: int) -> list[CandidateList]:
    """One list per query of ``candidates`` (label 1 rows first, then label 0 in table order),
    cut to ``list_length``; queries whose list is shorter are dropped (batched losses need equal
    lengths), as are queries without a positive."""
    from jrr_pipeline.ml.training.warmup import passage_text

    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    titles = corpus["title"].to_list() if "title" in corpus.columns else [""] * corpus.height
    passages = {d: passage_text(t, x) for d, t, x in
                zip(corpus["doc_id"].to_list(), titles, corpus["text"].to_list(), strict=True)}
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
            lists.append(CandidateList(text[qid], tuple(passages[d] for d in docs)))
    return lists


class RocketQAv2Task:
    """The joint task for ``ml.training.train``: modules ``retriever`` and ``reranker``."""

    def __init__(self, retriever: DenseRetriever, reranker: CrossEncoderReranker,
                 mode: str = "dynamic", kl_temperature: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"RocketQAv2Task: mode must be one of {MODES}, got {mode!r}")
        self.retriever = retriever
        self.reranker = reranker
        self.mode = mode
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
        size = {len(x.passages) for x in batch}
        if len(size) != 1:
            raise ValueError(f"RocketQAv2Task: lists of different lengths in one batch: {sorted(size)}")
        length = size.pop()
        r = self.retriever
        q = r.encode_queries(r.tokenize_queries([x.query for x in batch]))
        p = r.encode_passages(r.tokenize_passages([t for x in batch for t in x.passages]))
        s_de = torch.einsum("bd,bld->bl", q.float(), p.float().view(len(batch), length, -1))
        s_de = s_de / r.config.temperature
        pairs_q = [x.query for x in batch for _ in x.passages]
        pairs_p = [t for x in batch for t in x.passages]
        if self.mode == "static":
            self.reranker.eval()
            with torch.no_grad():
                s_ce = self.reranker(self.reranker.tokenize(pairs_q, pairs_p))
        else:
            s_ce = self.reranker(self.reranker.tokenize(pairs_q, pairs_p))
        return s_de, s_ce.view(len(batch), length)

    def loss(self, batch: list[CandidateList]) -> tuple[Tensor, dict[str, float]]:
        s_de, s_ce = self.scores(batch)
        kl = self.kl(s_de, s_ce)
        ce = self.ce(s_ce)
        total = kl if self.mode == "static" else ce + kl
        with torch.no_grad():
            metrics = {"kl": float(kl), "ce_loss": float(ce),
                       "retriever_acc": float((s_de.argmax(1) == 0).float().mean()),
                       "reranker_acc": float((s_ce.argmax(1) == 0).float().mean())}
        return total, metrics

    def save(self, output_dir: Path) -> None:
        """``output_dir/retriever`` and ``output_dir/reranker`` (HF / sentence-transformers folders)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True)
        self.retriever.save_pretrained(output_dir / "retriever")
        self.reranker.save_pretrained(output_dir / "reranker")
