"""Builds the game from ``GenerationSettings`` and the pipeline's tables, saves and loads a
generator, and composes the training queries of a labels mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from jrr_pipeline.ml.generation.base import QueryGenerator
from jrr_pipeline.ml.generation.game import GameConfig, GenerationGame
from jrr_pipeline.ml.generation.reward import RewardWeights
from jrr_pipeline.ml.io import atomic_write_json
from jrr_pipeline.ml.settings.generation import GenerationSettings
from jrr_pipeline.ml.text import passage_texts
from jrr_pipeline.ml.training.examples import RetrievalExample, build_retrieval_examples

GENERATOR_KIND_FILE = "generator.json"


def game_config(settings: GenerationSettings, bf16: bool) -> GameConfig:
    return GameConfig(
        rounds=settings.rounds, documents_per_round=settings.documents_per_round,
        queries_per_document=settings.queries_per_document, n_negatives=settings.n_negatives,
        negative_depth=settings.negative_depth,
        weights=RewardWeights(settings.reward_loss_weight, settings.reward_relevance_weight,
                              settings.reward_penalty_weight, settings.max_query_words,
                              settings.max_copy_words),
        relevance=settings.relevance,
        baseline=settings.baseline, policy_lr=settings.policy_lr,
        retriever_lr=settings.retriever_lr, reranker_lr=settings.reranker_lr,
        reranker_head_lr_multiplier=settings.reranker_head_lr_multiplier,
        batch_size=settings.batch_size, bf16=bf16, seed=settings.seed)


def build_generator(settings: GenerationSettings, doc_texts: list[str]) -> QueryGenerator:
    """The span policy (idf from the corpus) or the seq2seq model of ``settings``."""
    if settings.generator == "seq2seq":
        from jrr_pipeline.ml.generation.seq2seq import Seq2SeqQueryGenerator

        return Seq2SeqQueryGenerator.from_pretrained(
            settings.generator_model, max_source_length=settings.max_source_length,
            max_query_length=2 * settings.max_query_words, temperature=settings.temperature,
            top_p=settings.top_p)
    from jrr_pipeline.ml.generation.span_policy import (
        ExtractiveSpanPolicy,
        SpanPolicyConfig,
        inverse_document_frequencies,
    )

    return ExtractiveSpanPolicy.from_pretrained(SpanPolicyConfig(
        base_model=settings.generator_model, max_length=settings.max_source_length,
        max_span_words=settings.max_span_words, spans_per_query=settings.spans_per_query,
        temperature=settings.temperature, uniform=settings.policy == "random"),
        inverse_document_frequencies(doc_texts))


def save_generator(generator: QueryGenerator, settings: GenerationSettings,
                   directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    generator.save(directory)
    atomic_write_json(directory / GENERATOR_KIND_FILE, {"generator": settings.generator})


def load_generator(directory: Path) -> QueryGenerator:
    """A generator written by ``save_generator``."""
    try:
        kind = json.loads((directory / GENERATOR_KIND_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory / GENERATOR_KIND_FILE}: no saved generator ({err})") from err
    if kind.get("generator") == "seq2seq":
        from jrr_pipeline.ml.generation.seq2seq import Seq2SeqQueryGenerator

        return Seq2SeqQueryGenerator.load(directory)
    from jrr_pipeline.ml.generation.span_policy import ExtractiveSpanPolicy

    return ExtractiveSpanPolicy.load(directory)


def build_game(settings: GenerationSettings, corpus: pl.DataFrame, bm25, device: str = "cpu",
               bf16: bool = False, labelled: list[RetrievalExample] | None = None,
               progress: bool = False) -> GenerationGame:
    """The game over ``corpus`` with fresh models from ``settings.base_model`` (with
    ``relevance = "fusion"`` the corpus is encoded here once, ``progress`` shows it)."""
    from jrr_pipeline.ml.modeling import (
        CrossEncoderReranker,
        DenseRetriever,
        RerankerConfig,
        RetrieverConfig,
    )

    torch.manual_seed(settings.seed)  # a fresh reranker head and policy head
    doc_ids = corpus["doc_id"].cast(pl.Utf8).to_list()
    texts = passage_texts(corpus)
    generator = build_generator(settings, texts)
    retriever_config = RetrieverConfig(query_max_length=settings.query_max_length,
                                       passage_max_length=settings.passage_max_length)
    retriever = DenseRetriever.from_pretrained(settings.base_model, retriever_config)
    reranker, scorer = None, None
    if settings.relevance == "fusion":
        from jrr_pipeline.ml.generation.fusion_relevance import FusionRelevance

        encoder = DenseRetriever.from_pretrained(settings.base_model, retriever_config)
        scorer = FusionRelevance(encoder.to(device), bm25, doc_ids, texts,
                                 lexical_weight=settings.relevance_lexical_weight,
                                 temperature=settings.relevance_temperature,
                                 autocast_dtype=torch.bfloat16 if bf16 else None,
                                 progress=progress)
    else:
        reranker = CrossEncoderReranker.from_pretrained(settings.base_model, RerankerConfig(
            max_length=settings.reranker_max_length))
    for module in (generator, retriever, reranker):
        if module is not None:
            module.to(device)
    return GenerationGame(generator, retriever, reranker, bm25, doc_ids, texts,
                          game_config(settings, bf16), labelled=labelled,
                          relevance_scorer=scorer)


def labelled_examples(settings: GenerationSettings, corpus: pl.DataFrame, queries: pl.DataFrame,
                      qrels: pl.DataFrame, bm25) -> list[RetrievalExample]:
    """Augment mode: the warm-up's examples (one per labelled train (query, positive)) with
    BM25 negatives from the top ``negative_depth``, mined here: the bm25_negatives table lies
    downstream of the generated queries."""
    from jrr_pipeline.ml.sparse import mine_negatives

    negatives = mine_negatives(bm25, queries, qrels, k=settings.negative_depth, split="train")
    return build_retrieval_examples(queries, corpus, qrels, negatives, settings.n_negatives,
                                    settings.seed, split="train",
                                    rank_window=(1, settings.negative_depth))


def final_documents(settings: GenerationSettings, doc_ids: list[str]) -> list[str]:
    """The documents that get training queries: all, or a seeded sample of
    ``final_documents``, in corpus order."""
    if settings.final_documents == 0 or settings.final_documents >= len(doc_ids):
        return list(doc_ids)
    rng = np.random.default_rng([settings.seed, 1])
    picked = sorted(rng.choice(len(doc_ids), size=settings.final_documents, replace=False))
    return [doc_ids[i] for i in picked]


def training_tables(labels: str, queries: pl.DataFrame, qrels: pl.DataFrame,
                    generated: pl.DataFrame | None, augment_weight: float = 1.0,
                    seed: int = 42) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The queries and qrels the training stages read in a labels mode: ``only`` = the
    dataset's; ``none`` = the generated final-set queries as the train split (the dataset's
    train qrels dropped; dev and test stay for the report); ``augment`` = both, at most
    ``augment_weight`` generated queries per labelled train query (a seeded sample)."""
    if labels == "only":
        return queries, qrels
    if generated is None:
        raise ValueError(f"labels = {labels!r} needs the generated_queries table")
    final = generated.filter(pl.col("round") == -1).filter(pl.col("text").str.strip_chars() != "")
    if labels == "augment":
        n_train = qrels.filter(pl.col("split") == "train")["query_id"].n_unique()
        cap = max(1, round(augment_weight * n_train))
        if final.height > cap:
            final = final.sample(cap, seed=seed).sort("query_id")
        kept = qrels
    elif labels == "none":
        kept = qrels.filter(pl.col("split") != "train")
    else:
        raise ValueError(f"unknown labels mode {labels!r}; choose only, augment or none")
    gen_queries = final.select(pl.col("query_id"), pl.col("text"))
    gen_qrels = final.select(pl.col("query_id"), pl.col("doc_id").cast(pl.Utf8),
                             pl.lit(1, dtype=pl.Int32).alias("relevance"),
                             pl.lit("train").alias("split"))
    return (pl.concat([queries.select("query_id", "text"), gen_queries]),
            pl.concat([kept.select("query_id", "doc_id", "relevance", "split").with_columns(
                pl.col("relevance").cast(pl.Int32)), gen_qrels]))
