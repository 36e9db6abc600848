"""The settings of every pipeline stage: one frozen dataclass each, one name, default and help
text per knob. Presets (``jrr_pipeline.settings``) only change defaults; ``jrr settings --preset P``
prints what a preset resolves to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from jrr_pipeline.ml.data.tabular import COLUMN_ROLES, OPTIONAL_ROLES
from jrr_pipeline.ml.settings.base import Settings, did_you_mean, knob, shown
from jrr_pipeline.ml.settings.generation import GenerationSettings
from jrr_pipeline.ml.training.config import TrainConfig

BM25_METHODS = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
SPLITS = Literal["train", "dev", "test"]
SAMPLERS = Literal["uniform", "simans", "denoised"]
FAISS_PROBE_DIM = 5040  # divisible by every small sub-quantizer count, so only the syntax is judged


def check_faiss_factory(settings: Settings, name: str = "factory") -> None:
    """Raise ValueError naming ``STAGE.FIELD`` unless the field is a FAISS index_factory string."""
    import faiss

    factory = getattr(settings, name)
    try:
        faiss.index_factory(FAISS_PROBE_DIM, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise ValueError(f"{settings.stage}.{name} = {shown(factory)}: not a FAISS index_factory "
                         f"string (e.g. Flat, HNSW32, IVF64,Flat, IVF256,PQ16)") from None


@dataclass(frozen=True)
class DatasetSettings(Settings):
    """How the dataset directory is read: its layout and, for CSV / TSV / Parquet files, which
    column of the files holds each field."""

    stage: ClassVar[str] = "dataset"

    format: Literal["auto", "beir", "msmarco", "tabular"] = knob(
        "auto", "layout: auto (told by the corpus file's name), beir, msmarco or tabular "
                "(CSV / TSV / Parquet)")
    columns: dict[str, str] = knob(
        {}, "tabular layout: field -> the files' column name, e.g. {doc_id = \"id\"}; fields: "
            + ", ".join(COLUMN_ROLES) + " ('' = no title / split column)")

    def check(self) -> None:
        for role, column in self.columns.items():
            if role not in COLUMN_ROLES:
                raise ValueError(f"{self.stage}.columns.{role}: not a field of the column "
                                 f"mapping{did_you_mean(role, list(COLUMN_ROLES))}")
            if not column.strip() and role not in OPTIONAL_ROLES:
                raise ValueError(f"{self.stage}.columns.{role} = '': needs a column name (only "
                                 f"{' and '.join(OPTIONAL_ROLES)} may be '' = absent)")
        if self.columns and self.format in ("beir", "msmarco"):
            raise ValueError(f"{self.stage}.columns: the {self.format} layout has fixed field "
                             f"names; a column mapping applies to format = 'tabular' (or 'auto')")


@dataclass(frozen=True)
class QrelsSettings(Settings):
    """The dev split that model selection reads. A dataset without one gets it carved from train:
    a deterministic share of the train queries (by a hash of their ids), never trained on."""

    stage: ClassVar[str] = "qrels"

    dev_fraction: float = knob(0.1, "share of the train queries carved into dev when the dataset "
                                    "has no dev split (0 = carve none)", ge=0, lt=1)
    dev_min_queries: int = knob(30, "carve at least this many dev queries (at most half of the "
                                    "train queries)", ge=1)
    dev_seed: int = knob(0, "seed of the carve (which queries go to dev)")


@dataclass(frozen=True)
class BM25IndexSettings(Settings):
    """BM25 over the corpus. k1=1.2, b=0.75 are Lucene's own defaults; with the Lucene variant,
    English stemming, English stopwords and titles they give nDCG@10 0.679 on SciFact test."""

    stage: ClassVar[str] = "bm25_index"

    k1: float = knob(1.2, "BM25 term-frequency saturation (Lucene's default)", ge=0)
    b: float = knob(0.75, "BM25 document-length normalisation", ge=0, le=1)
    method: BM25_METHODS = knob("lucene", "bm25s scoring variant")
    stemmer: str = knob("english", "PyStemmer algorithm ('' = no stemming)")
    stopwords: str = knob("en", "bm25s stopword language ('' = keep every word)")
    include_title: bool = knob(True, "index 'title text' instead of the text alone")

    def check(self) -> None:
        import Stemmer

        if self.stemmer and self.stemmer not in Stemmer.algorithms():
            raise ValueError(f"{self.stage}.stemmer = {self.stemmer!r}: not a PyStemmer algorithm "
                             f"(e.g. english, german, french)")


@dataclass(frozen=True)
class BM25NegativesSettings(Settings):
    stage: ClassVar[str] = "bm25_negatives"

    top_k: int = knob(100, "BM25 depth mined per training query", ge=1)
    split: SPLITS = knob("train", "qrels split whose queries are mined")
    min_negatives: int = knob(10, "queries with fewer negatives than this are counted in the "
                                  "asset's metadata", ge=0)
    threads: int = knob(1, "bm25s search threads", ge=1)


@dataclass(frozen=True)
class WarmupSettings(TrainConfig):
    """What both warm-up trainings share: the base model and the BM25 negatives they draw."""

    base_model: str = knob("default", "HF model id or local path; 'default' = the packaged "
                                      "all-MiniLM-L6-v2")
    n_negatives: int = knob(7, "BM25 negatives per training example", ge=0)
    rank_window_start: int = knob(1, "draw negatives from BM25 ranks >= this", ge=1)
    rank_window_end: int = knob(100, "... and <= this", ge=1)

    def check(self) -> None:
        if self.rank_window_start > self.rank_window_end:
            raise ValueError(f"{self.stage}.rank_window_start = {self.rank_window_start}: must "
                             f"be <= rank_window_end ({self.rank_window_end})")


@dataclass(frozen=True)
class WarmupRetrieverSettings(WarmupSettings):
    """DPR-style warm-up: InfoNCE over 1 positive + n BM25 negatives + in-batch negatives."""

    stage: ClassVar[str] = "warmup_retriever"

    pooling: Literal["mean", "cls"] = knob("mean", "token pooling of the encoder")
    normalize: bool = knob(True, "L2-normalise embeddings (cosine similarity)")
    temperature: float = knob(0.05, "s(q, p) = <q, p> / temperature", gt=0)
    shared_encoder: bool = knob(True, "one tower for queries and passages")
    query_max_length: int = knob(64, "query tokens", ge=2)
    passage_max_length: int = knob(256, "passage tokens in training", ge=2)
    index_passage_max_length: int = knob(
        256, "passage tokens the saved model encodes the corpus with (0 = as in training)", ge=0)

    sampler: SAMPLERS = knob(
        "uniform", "how the hard negatives are drawn from the BM25 rank window: uniform | simans "
                   "(weight exp(-a (s(q,p-) - s(q,p+) - b)^2), s = the base model's cosine / "
                   "temperature) | denoised (only negatives the warm-up reranker gives a "
                   "probability below denoised_tau_neg of beating the positive)")
    simans_a: float = knob(0.5, "simans: width a of the weights (scores are cosine / "
                                "temperature, so within about +-20)", gt=0)
    simans_b: float = knob(0.0, "simans: offset b: negatives scored near s(q, p+) + b are the "
                                "likeliest")
    denoised_tau_neg: float = knob(
        0.1, "denoised: a negative stays one only if sigmoid(s_ce(q, p-) - s_ce(q, best "
             "positive)) is below this (RocketQA's tau_neg)", gt=0, le=1)
    score_depth: int = knob(
        30, "simans / denoised / tas_balanced: the first N negatives of the rank window that are "
            "scored per query (by the base model, or the warm-up reranker) and drawn from", ge=1)
    batching: Literal["random", "tas_balanced"] = knob(
        "random", "random (a seeded shuffle per epoch) | tas_balanced (TAS-B: every batch from "
                  "one k-means cluster of the queries, each query's negative drawn from a "
                  "uniformly chosen bin of the warm-up reranker's margin s_ce(p+) - s_ce(p-))")
    tas_clusters: int = knob(32, "tas_balanced: k of the k-means (FAISS) over the train "
                                 "queries' embeddings by the base model", ge=1)
    tas_bins: int = knob(10, "tas_balanced: equal-width margin bins per (query, positive)", ge=1)
    negatives: Literal["lists", "cache"] = knob(
        "lists", "lists (the example's hard negatives + in-batch) | cache (also cache_size cached "
                 "corpus passage embeddings, a share re-encoded every step, no gradient through "
                 "them: Lindgren et al. 2021)")
    cache_size: int = knob(1024, "cache: passages in the negative cache, drawn from the corpus",
                           ge=1)
    cache_refresh: float = knob(0.05, "cache: share of the cache re-encoded with the current "
                                      "encoder every step (1 = all of it: exact, slow)",
                                gt=0, le=1)

    def sampler_spec(self) -> dict[str, Any]:
        """``build_sampler`` options of ``sampler`` over the rank window."""
        from jrr_pipeline.ml.sampling import sampler_spec

        return sampler_spec(self.sampler, rank_window=(self.rank_window_start,
                                                       self.rank_window_end),
                            a=self.simans_a, b=self.simans_b, tau_neg=self.denoised_tau_neg)

    def needs_reranker(self) -> bool:
        """Whether training reads the warm-up reranker (denoised sampler, TAS-B margins)."""
        return self.sampler == "denoised" or self.batching == "tas_balanced"

    def model_fields(self) -> dict[str, Any]:
        """``RetrieverConfig`` of the model to train."""
        return {"base_model": self.base_model, "pooling": self.pooling,
                "normalize": self.normalize, "temperature": self.temperature,
                "shared_encoder": self.shared_encoder, "query_max_length": self.query_max_length,
                "passage_max_length": self.passage_max_length,
                "gradient_checkpointing": self.gradient_checkpointing}

    def serving_fields(self) -> dict[str, Any]:
        """Model config fields the saved checkpoint gets instead of the training ones."""
        length = self.index_passage_max_length
        return {"passage_max_length": length} if length else {}


@dataclass(frozen=True)
class WarmupRerankerSettings(WarmupSettings):
    """Listwise softmax CE of the cross-encoder over 1 positive + n BM25 negatives."""

    stage: ClassVar[str] = "warmup_reranker"

    max_length: int = knob(256, "query + passage tokens", ge=3)
    batch_size: int = knob(8, "queries (lists) per optimizer step", ge=1)
    lr: float = knob(1e-4, "peak AdamW learning rate (at 4e-5 the listwise loss of a "
                           "MiniLM-initialised cross-encoder stays at ln(list length) for 100+ "
                           "steps)", gt=0)
    head_lr_multiplier: float = knob(50.0, "learning-rate factor of the new classifier head (it "
                                           "starts random)", gt=0)

    def model_fields(self) -> dict[str, Any]:
        """``RerankerConfig`` of the model to train."""
        return {"base_model": self.base_model, "max_length": self.max_length,
                "gradient_checkpointing": self.gradient_checkpointing}

    def serving_fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class DenseNegativesSettings(Settings):
    stage: ClassVar[str] = "dense_negatives"

    top_k: int = knob(100, "retriever depth mined per training query", ge=1)
    split: SPLITS = knob("train", "qrels split whose queries are mined")
    factory: str = knob("Flat", "FAISS index_factory string (inner product) of the corpus index")
    batch_size: int = knob(64, "passages per encoding batch", ge=1)

    def check(self) -> None:
        check_faiss_factory(self)


@dataclass(frozen=True)
class DenoisedCandidatesSettings(Settings):
    """RocketQA denoising of the retrieved top-k, then RocketQAv2 hybrid lists."""

    stage: ClassVar[str] = "denoised_candidates"

    top_k: int = knob(30, "top-k of each source (BM25, dense) scored per training query", ge=1)
    sources: list[Literal["bm25", "dense"]] = knob(["bm25", "dense"], "negatives sources merged")
    tau_neg: float = knob(0.1, "keep a retrieved passage as a negative only if its calibrated "
                               "reranker probability is below this", gt=0, le=1)
    tau_pos: float = knob(0.9, "pseudo positive above this (when promoted)", gt=0, le=1)
    promote_pseudo_positives: bool = knob(False, "turn unlabelled passages above tau_pos into "
                                                 "positives")
    calibration: Literal["relative", "sigmoid", "softmax"] = knob(
        "relative", "logit -> probability: relative = sigmoid(s - s_positive), sigmoid, or "
                    "softmax over the query's candidates")
    list_length: int = knob(8, "candidates per query list (positive + negatives)", ge=2)
    denoised_ratio: float = knob(0.5, "share of a list's negatives drawn from the denoised set "
                                      "(the rest from the undenoised retrieved set)", ge=0, le=1)
    batch_size: int = knob(64, "query-passage pairs per reranker batch", ge=1)
    seed: int = knob(42, "seed of the list sampling")

    def check(self) -> None:
        if not self.sources:
            raise ValueError(f"{self.stage}.sources = []: name at least one of 'bm25', 'dense'")
        if self.tau_pos < self.tau_neg:
            raise ValueError(f"{self.stage}.tau_pos = {self.tau_pos}: must be >= tau_neg "
                             f"({self.tau_neg})")


@dataclass(frozen=True)
class JointSettings(Settings):
    """Joint training of the retriever and the reranker: RocketQAv2 or AR2 (``ar2_*`` knobs)."""

    stage: ClassVar[str] = "joint_models"

    method: Literal["rocketqav2", "ar2"] = knob("rocketqav2", "joint training method")
    mode: Literal["dynamic", "static"] = knob(
        "dynamic", "rocketqav2: dynamic (both models learn from the KL term) | static (reranker "
                   "frozen: plain distillation, the ablation)")
    list_length: int = knob(16, "candidates per query list (positive first)", ge=2)
    batch_size: int = knob(8, "query lists per optimizer step", ge=1)
    epochs: int = knob(1, "rocketqav2: passes over the lists", ge=1)
    max_steps: int = knob(0, "rocketqav2: stop after N steps (0 = epochs decide)", ge=0)
    retriever_lr: float = knob(3e-5, "peak AdamW learning rate of the retriever", gt=0)
    reranker_lr: float = knob(3e-5, "peak AdamW learning rate of the reranker (also AR2's ranker "
                                    "phase)", gt=0)
    kl_temperature: float = knob(1.0, "softmax temperature of the KL term (rocketqav2) and of "
                                      "both distributions (ar2)", gt=0)
    retriever_ce_weight: float = knob(
        1.0, "weight of the retriever's own listwise CE on the labelled positive, added to the "
             "method's loss (our addition; 0 = the paper's loss)", ge=0)
    sampler: SAMPLERS = knob(
        "uniform", "how a list's negatives are picked from its query's label-0 rows of the "
                   "candidates table: uniform (the table's own uniform draw: its first "
                   "list_length - 1, as always) | simans (SimANS weights, s = the warm-up "
                   "retriever's cosine / temperature) | denoised (only rows with "
                   "sigmoid(ce_score - best positive's ce_score) below denoised_tau_neg); short "
                   "picks are topped up in table order. Set denoised_candidates.list_length above "
                   "list_length to give simans / denoised a choice")
    simans_a: float = knob(0.5, "simans: width a of the weights (scores are cosine / "
                                "temperature)", gt=0)
    simans_b: float = knob(0.0, "simans: offset b: rows scored near s(q, p+) + b are the "
                                "likeliest")
    denoised_tau_neg: float = knob(0.1, "denoised: the warm-up reranker probability a row must "
                                        "stay below to be a negative", gt=0, le=1)
    retriever_in_batch: bool = knob(
        False, "rocketqav2: the retriever's CE over every passage of the batch (other lists as "
               "in-batch negatives) instead of its own list")
    warmup_ratio: float = knob(0.1, "share of steps with a linear learning-rate warm-up",
                               ge=0, lt=1)
    weight_decay: float = knob(0.01, "AdamW weight decay", ge=0)
    max_grad_norm: float = knob(1.0, "gradient clipping norm (<= 0: none)")
    passage_max_length: int = knob(256, "retriever passage tokens in training", ge=8)
    reranker_max_length: int = knob(256, "reranker query + passage tokens in training", ge=8)
    index_passage_max_length: int = knob(
        256, "passage tokens the saved retriever encodes the corpus with (0 = as in training)",
        ge=0)
    ar2_iterations: int = knob(2, "ar2: ranker + retriever phase pairs", ge=1)
    ar2_ranker_steps: int = knob(20, "ar2: optimizer steps per ranker phase", ge=1)
    ar2_retriever_steps: int = knob(20, "ar2: optimizer steps per retriever phase", ge=1)
    ar2_lambda: float = knob(1.0, "ar2: weight of KL(p_ranker || p_retriever) added to the "
                                  "adversarial term (AR2's official code writes c * adv + (1 - c) * "
                                  "KL; its c = 0.5 is lambda = 1)", ge=0)
    ar2_reward: Literal["listwise", "pairwise"] = knob(
        "listwise", "ar2: adversarial term over the whole list (the paper's expectation) or with "
                    "the official code's pairwise reward log sigmoid(s_+ - s_d)")
    ar2_refresh_every: int = knob(
        1, "ar2: re-encode the corpus and re-draw the lists every N iterations (0 = never, the "
           "no-refresh ablation)", ge=0)
    ar2_refresh_top_k: int = knob(30, "ar2: retrieval depth of a refresh", ge=1)
    ar2_refresh_tau_neg: float = knob(
        0.1, "ar2: a refreshed passage stays a negative only if the current ranker's probability "
             "that it beats the positive is below this (RocketQA denoising)", gt=0, le=1)
    encode_batch_size: int = knob(64, "ar2: passages per batch when a refresh encodes the corpus",
                                  ge=1)
    grad_cache_chunk: int = knob(
        0, "rocketqav2: GradCache chunk (texts per forward; 0 = off): the same gradients in the "
           "memory of one chunk; single process only", ge=0)
    chunk_pairs: int = knob(0, "reranker pairs per forward (0 = all at once)", ge=0)
    bf16: Literal["auto", "on", "off"] = knob("auto", "bf16 autocast (see TrainConfig.bf16)")
    gradient_checkpointing: bool = knob(False, "recompute activations in backward")
    seed: int = knob(42, "seed of the data order, dropout and refresh sampling")
    checkpoint_every: int = knob(10, "save the full training state every N steps", ge=1)
    log_every: int = knob(5, "log metrics every N steps", ge=1)

    def check(self) -> None:
        if self.retriever_in_batch and self.retriever_ce_weight == 0:
            raise ValueError(f"{self.stage}.retriever_in_batch = True: needs "
                             f"retriever_ce_weight > 0 (it widens the retriever's CE term)")

    def sampler_spec(self) -> dict[str, Any] | None:
        """``build_sampler`` options of ``sampler``; None for uniform (the table's own draw)."""
        from jrr_pipeline.ml.sampling import sampler_spec

        if self.sampler == "uniform":
            return None
        return sampler_spec(self.sampler, a=self.simans_a, b=self.simans_b,
                            tau_neg=self.denoised_tau_neg)

    def train_config(self, **changes: Any) -> TrainConfig:
        """The loop's settings: RocketQAv2's run and AR2's retriever phase (lr = retriever_lr)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)
                  if hasattr(self, f.name)}
        return TrainConfig(**{**shared, "lr": self.retriever_lr, **changes})


@dataclass(frozen=True)
class FaissIndexSettings(Settings):
    stage: ClassVar[str] = "faiss_index"

    factory: str = knob("Flat", "FAISS index_factory string (inner product); Flat is exact")
    hnsw_ef_search: int = knob(128, "efSearch of HNSW indexes", ge=1)
    nprobe: int = knob(16, "nprobe of IVF indexes", ge=1)
    batch_size: int = knob(64, "passages per encoding batch", ge=1)
    shards: int = knob(1, "build the index in this many shards, one corpus slice encoded and "
                          "indexed at a time (memory of one slice), searched together "
                          "(faiss.IndexShards); IVF / PQ train on the first slice", ge=1)
    max_shard_vectors: int = knob(
        250_000, "at most this many vectors per shard: larger corpora get more shards (0 = no "
                 "cap). One HNSW graph builds in n^1.2 past ~250k vectors on 2 cores as it "
                 "outgrows the caches; capped shards keep the build near n (bench/scale.py)",
        ge=0)

    def check(self) -> None:
        check_faiss_factory(self)

    def shard_count(self, n: int) -> int:
        """Shards for ``n`` vectors: ``shards``, or more where ``max_shard_vectors`` needs."""
        if self.max_shard_vectors <= 0:
            return self.shards
        return max(self.shards, -(-n // self.max_shard_vectors))


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    stage: ClassVar[str] = "evaluation_report"

    depth: int = knob(100, "retrieval depth per query", ge=1)
    rerank_depth: int = knob(100, "top-k of the first stage the reranker rescores", ge=1)
    rerank_batch_size: int = knob(64, "query-passage pairs per reranker batch", ge=1)
    rerank_fusion_weight: float = knob(
        0.5, "reranked score = w * z(reranker) + (1 - w) * z(first stage) per query (1.0 = the "
             "reranker alone, also reported as *_ce_only)", ge=0, le=1)
    bm25_threads: int = knob(1, "bm25s search threads", ge=1)


STAGES: dict[str, type[Settings]] = {cls.stage: cls for cls in (
    DatasetSettings, QrelsSettings, BM25IndexSettings, BM25NegativesSettings,
    GenerationSettings, WarmupRetrieverSettings, WarmupRerankerSettings,
    DenseNegativesSettings, DenoisedCandidatesSettings, JointSettings, FaissIndexSettings,
    EvaluationSettings)}
