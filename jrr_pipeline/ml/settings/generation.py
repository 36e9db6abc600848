"""Settings of the generation stage: the generator-retriever game (``ml.generation``) and the
``labels`` mode that decides whether the training stages read labelled, generated or both kinds
of training queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from jrr_pipeline.ml.settings.base import Settings, knob

LABEL_MODES = ("only", "augment", "none")


@dataclass(frozen=True)
class GenerationSettings(Settings):
    """The generator-retriever game and the labels mode."""

    stage: ClassVar[str] = "generation"

    labels: Literal["only", "augment", "none"] = knob(
        "only", "training queries: only = the dataset's train qrels (no generation stage); "
                "augment = labelled plus generated; none = generated only (train qrels unused)")
    generator: Literal["span", "seq2seq"] = knob(
        "span", "span = the offline extractive span policy on the base model; seq2seq = an "
                "AutoModelForSeq2SeqLM (generator_model: a T5 / doc2query path or hub id)")
    generator_model: str = knob("default", "the span policy's encoder, or the seq2seq model "
                                           "('default' = the packaged MiniLM; span only)")
    policy: Literal["learned", "random"] = knob(
        "learned", "random = never update the generator (the random-span ablation)")
    base_model: str = knob("default", "starting point of the game's retriever and reranker")
    rounds: int = knob(8, "rounds of the game", ge=1)
    documents_per_round: int = knob(64, "documents sampled per round", ge=1)
    queries_per_document: int = knob(4, "queries generated per sampled document (k)", ge=1)
    reward_loss_weight: float = knob(1.0, "a: weight of the retriever's loss on the query", ge=0)
    reward_relevance_weight: float = knob(
        1.0, "b: weight of the relevance S(q, d) of the source document (see relevance)", ge=0)
    relevance: Literal["reranker", "fusion"] = knob(
        "reranker", "S(q, d) of the reward: reranker = the game's own cross-encoder (trained on "
                    "the game's pairs; it stays at chance without labels); fusion = the frozen "
                    "base encoder's cosine + relevance_lexical_weight * BM25 / max BM25 "
                    "(no reranker plays)")
    relevance_lexical_weight: float = knob(
        0.5, "fusion: weight w of the normalised BM25 score (0.5 was best on SciFact dev)", ge=0)
    relevance_temperature: float = knob(0.05, "fusion: softmax temperature of the scores", gt=0)
    reward_penalty_weight: float = knob(1.0, "c: weight of the length / copy penalty", ge=0)
    baseline: Literal["document_mean", "moving_average"] = knob(
        "document_mean", "REINFORCE baseline: the mean reward of the document's k queries, or a "
                         "moving average over rounds")
    max_query_words: int = knob(12, "longer queries are penalised", ge=1)
    max_copy_words: int = knob(6, "a longer verbatim run of the document is penalised, and "
                                  "fails the generated_queries check unless allow_copies", ge=1)
    allow_copies: bool = knob(False, "let the check pass queries that copy more than "
                                     "max_copy_words words of their document")
    max_duplicate_rate: float = knob(0.3, "the check fails above this share of repeated "
                                          "queries in the final set", ge=0, le=1)
    spans_per_query: int = knob(2, "span: spans per query", ge=1)
    max_span_words: int = knob(3, "span: words per span", ge=1)
    temperature: float = knob(1.0, "sampling temperature of the generator", gt=0)
    top_p: float = knob(1.0, "seq2seq: nucleus sampling mass", gt=0, le=1)
    max_source_length: int = knob(256, "document tokens the generator reads", ge=8)
    n_negatives: int = knob(3, "BM25 hard negatives per generated query (reward and training)",
                            ge=0)
    negative_depth: int = knob(30, "hard negatives are drawn from the query's BM25 top-k", ge=1)
    policy_lr: float = knob(1e-3, "Adam learning rate of the generator", gt=0)
    retriever_lr: float = knob(2e-5, "AdamW learning rate of the game's retriever", gt=0)
    reranker_lr: float = knob(5e-5, "AdamW learning rate of the game's reranker", gt=0)
    reranker_head_lr_multiplier: float = knob(
        50.0, "learning-rate factor of the game reranker's fresh classifier head (as the "
              "warm-up reranker's head_lr_multiplier)", gt=0)
    batch_size: int = knob(16, "generated pairs per retriever / reranker step", ge=2)
    query_max_length: int = knob(64, "retriever query tokens", ge=2)
    passage_max_length: int = knob(192, "retriever passage tokens", ge=8)
    reranker_max_length: int = knob(128, "reranker query + passage tokens", ge=8)
    final_documents: int = knob(1000, "documents that get training queries from the trained "
                                      "generator (0 = every document)", ge=0)
    final_queries_per_document: int = knob(1, "training queries per such document", ge=1)
    augment_weight: float = knob(1.0, "augment: generated training queries per labelled train "
                                      "query (at most)", gt=0)
    bf16: Literal["auto", "on", "off"] = knob("auto", "bf16 autocast (as the training stages)")
    seed: int = knob(42, "seed of document sampling, generation and training")

    def check(self) -> None:
        if self.generator == "seq2seq" and self.generator_model.strip().lower() in (
                "default", "minilm", ""):
            raise ValueError(f"{self.stage}.generator_model = {self.generator_model!r}: the "
                             f"seq2seq generator needs a seq2seq model (a T5 or doc2query path "
                             f"or hub id); the packaged MiniLM is an encoder")
