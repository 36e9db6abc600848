"""[negatives] bm25_index -> bm25_negatives: a BM25 index of the corpus and top-k train negatives."""


import time

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from jrr_pipeline.assets.common import WAREHOUSE_POOL, stage_config
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, DatasetSource, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "negatives"


def build_negatives_assets(settings: dict[str, Settings]) -> list:
    IndexConfig = stage_config(settings["bm25_index"])
    NegConfig = stage_config(settings["bm25_negatives"])

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
        })

    @asset(
        name="bm25_negatives",
        pool=WAREHOUSE_POOL,
        group_name=GROUP,
        deps=["bm25_index", "queries", "qrels"],
        code_version=code_version(settings["bm25_negatives"], __name__, "jrr_pipeline.ml.sparse"),
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
        queries, qrels = warehouse.table("queries"), warehouse.table("qrels")
        splits = sorted(qrels["split"].unique().to_list())
        if config.split not in splits:
            raise ValueError(
                f"{dataset.directory}: the qrels have no '{config.split}' split (found: "
                f"{', '.join(splits) or 'none'}); the training stages need labelled "
                f"{config.split} queries (BEIR: qrels/{config.split}.tsv); without them only "
                f"the data and BM25 index can be built (--select '*bm25_index')")
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


@asset_check(asset="bm25_negatives", additional_deps=["qrels"],
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
