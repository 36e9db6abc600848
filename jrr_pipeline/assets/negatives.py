"""[negatives] bm25_index -> bm25_negatives (BM25 top-k of every train query) and dense_negatives
(ANCE-style: the warm-up retriever's top-k from a FAISS index over the corpus)."""


import time

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from jrr_pipeline.assets.common import (
    DEVICE_POOL,
    WAREHOUSE_POOL,
    label_deps,
    label_settings,
    manifest,
    stage_config,
    training_tables,
)
from jrr_pipeline.ml.inference import autocast_dtype, encode_queries, load_retriever
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "negatives"
WARMUP_INDEX = "warmup_index"  # artifact folder of the warm-up retriever's corpus index


def build_negatives_assets(settings: dict[str, Settings]) -> list:
    IndexConfig = stage_config(settings["bm25_index"])
    NegConfig = stage_config(settings["bm25_negatives"])
    generation = settings["generation"]

    @asset(
        name="bm25_index",
        pool=WAREHOUSE_POOL,
        group_name=GROUP,
        deps=["corpus"],
        code_version=code_version(settings["bm25_index"], __name__, "jrr_pipeline.ml.sparse"),
        description="bm25s (Lucene variant, PyStemmer English, English stopwords) over the corpus",
    )
    def bm25_index(
        context: AssetExecutionContext,
        config: IndexConfig,
        warehouse: Warehouse,
        artifacts: ArtifactStore,
        dataset: DatasetSource,
    ) -> MaterializeResult:
        from jrr_pipeline.ml.sparse import BM25Index, corpus_texts

        corpus = warehouse.table("corpus")
        started = time.perf_counter()
        bm25_config = config.settings()
        index = BM25Index.build(corpus["doc_id"].to_list(),
                                corpus_texts(corpus, config.include_title), bm25_config)
        path = artifacts.path(dataset.dataset_name, "bm25_index")
        index.save(path)
        seconds = time.perf_counter() - started
        context.log.info(f"indexed {index.num_docs} docs in {seconds:.1f}s -> {path}")
        return MaterializeResult(metadata={
            "path": MetadataValue.path(str(path)),
            "num_docs": index.num_docs,
            "seconds": round(seconds, 3),
            **manifest(path),
        })

    @asset(
        name="bm25_negatives",
        pool=WAREHOUSE_POOL,
        group_name=GROUP,
        deps=["bm25_index", "queries", "qrels", *label_deps(settings)],
        code_version=code_version([settings["bm25_negatives"], *label_settings(settings)],
                                  __name__, "jrr_pipeline.ml.sparse"),
        description="BM25 top-k of every train query minus its labelled positives -> negatives table",
    )
    def bm25_negatives(
        context: AssetExecutionContext,
        config: NegConfig,
        warehouse: Warehouse,
        artifacts: ArtifactStore,
        dataset: DatasetSource,
    ) -> MaterializeResult:
        from jrr_pipeline.ml.sparse import BM25Index, mine_negatives

        index = BM25Index.load(artifacts.path(dataset.dataset_name, "bm25_index"))
        queries, qrels = training_tables(warehouse, generation)
        splits = sorted(qrels["split"].unique().to_list())
        if config.split not in splits:
            raise ValueError(
                f"{dataset.directory}: the qrels have no '{config.split}' split (found: "
                f"{', '.join(splits) or 'none'}); the training stages need labelled "
                f"{config.split} queries (BEIR: qrels/{config.split}.tsv); without them only "
                f"the data and BM25 index can be built (--select '*bm25_index'), or train on "
                f"generated queries (--labels none)")
        started = time.perf_counter()
        negatives = mine_negatives(index, queries, qrels, k=config.top_k, split=config.split,
                                   n_threads=config.threads)
        seconds = time.perf_counter() - started
        warehouse.replace_where("negatives", "source = ?", ["bm25"], negatives)
        per_query = negatives.group_by("query_id").len()
        n_queries = qrels.filter(qrels["split"] == config.split)["query_id"].n_unique()
        few = per_query.filter(per_query["len"] < config.min_negatives)
        missing = n_queries - per_query.height
        context.log.info(
            f"mined {negatives.height} negatives for {per_query.height}/{n_queries} "
            f"{config.split} queries in {seconds:.2f}s ({n_queries / max(seconds, 1e-9):.0f} q/s)"
        )
        return MaterializeResult(metadata={
            "dagster/row_count": negatives.height,
            "queries": n_queries,
            "queries_without_negatives": missing,
            f"queries_with_fewer_than_{config.min_negatives}": few.height + missing,
            "mean_negatives_per_query": round(negatives.height / max(per_query.height, 1), 2),
            "seconds": round(seconds, 3),
            "queries_per_second": round(n_queries / max(seconds, 1e-9), 1),
        })

    return [bm25_index, bm25_negatives]


def build_dense_assets(settings: dict[str, Settings]) -> list:
    """dense_negatives: the warm-up retriever's ANCE-style negatives."""
    DenseCfg = stage_config(settings["dense_negatives"])
    generation = settings["generation"]

    @asset(
        name="dense_negatives",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["warmup_retriever", "corpus", "queries", "qrels", *label_deps(settings)],
        code_version=code_version([settings["dense_negatives"], *label_settings(settings)],
                                  __name__, "jrr_pipeline.ml.index"),
        description="Encode the corpus with the warm-up retriever, index it with FAISS (kept as the "
                    "warmup_index artifact), mine top-k per train query minus positives -> negatives",
    )
    def dense_negatives(context: AssetExecutionContext, config: DenseCfg, warehouse: Warehouse,
                        artifacts: ArtifactStore, dataset: DatasetSource,
                        compute: Compute) -> MaterializeResult:
        with compute.claim(f"dense_negatives ({context.run.run_id[:8]})", on_wait=context.log.warning):
            return _dense_negatives(context, config.settings(), warehouse, artifacts, dataset,
                                    compute, generation)

    return [dense_negatives]


def _dense_negatives(context, config, warehouse, artifacts, dataset, compute,
                     generation) -> MaterializeResult:
    from jrr_pipeline.ml.index import build_index, encode_corpus, save_index, search

    name = dataset.dataset_name
    compute.apply_threads()
    retriever = load_retriever(artifacts.path(name, "warmup_retriever"), compute.torch_device())
    corpus = warehouse.table("corpus")
    started = time.perf_counter()
    embeddings = encode_corpus(retriever, corpus, batch_size=config.batch_size, progress=True,
                               autocast_dtype=autocast_dtype(compute.use_bf16()))
    encode_s = time.perf_counter() - started
    context.log.info(f"encoded {corpus.height} passages in {encode_s:.0f}s "
                     f"({corpus.height / max(encode_s, 1e-9):.1f} passages/s)")
    index = build_index(embeddings, factory=config.factory)
    doc_ids = corpus["doc_id"].to_list()
    save_index(index, doc_ids, artifacts.path(name, WARMUP_INDEX))

    queries, qrels = training_tables(warehouse, generation)
    split_qrels = qrels.filter(pl.col("split") == config.split)
    query_ids = sorted(split_qrels["query_id"].unique().to_list())
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    q_emb = encode_queries(retriever, [text[q] for q in query_ids], compute.use_bf16())
    started = time.perf_counter()
    hits, scores = search(index, doc_ids, q_emb, config.top_k)
    search_s = time.perf_counter() - started
    positives = set(
        qrels.filter(pl.col("relevance") > 0).select("query_id", "doc_id").iter_rows()
    )
    rows = [
        (qid, did, rank, float(score), "dense")
        for qid, docs, row in zip(query_ids, hits, scores, strict=True)
        for rank, (did, score) in enumerate(zip(docs, row, strict=True), start=1)
        if (qid, did) not in positives
    ]
    negatives = pl.DataFrame(rows, schema={"query_id": pl.Utf8, "doc_id": pl.Utf8,
                                           "rank": pl.Int32, "score": pl.Float64,
                                           "source": pl.Utf8}, orient="row")
    warehouse.replace_where("negatives", "source = ?", ["dense"], negatives)
    return MaterializeResult(metadata={
        "dagster/row_count": negatives.height,
        "queries": len(query_ids),
        "encode_seconds": round(encode_s, 1),
        "passages_per_second": round(corpus.height / max(encode_s, 1e-9), 1),
        "search_queries_per_second": round(len(query_ids) / max(search_s, 1e-9), 1),
        "index_path": MetadataValue.path(str(artifacts.path(name, WARMUP_INDEX))),
        "factory": config.factory,
        **manifest(artifacts.path(name, WARMUP_INDEX)),
    })


@asset_check(asset="bm25_negatives", additional_deps=["qrels"], blocking=True,
             description="no labelled positive of a query appears among its negatives")
def negatives_exclude_positives(warehouse: Warehouse) -> AssetCheckResult:
    leaked = warehouse.query(
        "SELECT n.query_id, n.doc_id FROM negatives n JOIN qrels q "
        "ON n.query_id = q.query_id AND n.doc_id = q.doc_id WHERE q.relevance > 0"
    )
    return AssetCheckResult(
        passed=leaked.height == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"count": leaked.height, "examples": MetadataValue.json(leaked.head(10).rows())},
    )


NEGATIVES_CHECKS = [negatives_exclude_positives]
