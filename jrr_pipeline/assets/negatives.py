"""[negatives] bm25_index -> bm25_negatives: a BM25 index of the corpus and top-k train negatives."""


import time

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from jrr_pipeline.assets.common import WAREHOUSE_POOL
from jrr_pipeline.presets import code_version, preset_config
from jrr_pipeline.resources import ArtifactStore, DatasetSource, Warehouse

GROUP = "negatives"


class BM25IndexConfig(Config):
    k1: float = Field(default=1.2, description="BM25 term-frequency saturation (Lucene default)")
    b: float = Field(default=0.75, description="BM25 length normalisation")
    method: str = Field(default="lucene", description="bm25s scoring variant")
    include_title: bool = Field(default=True, description="index 'title text' instead of text only")


class BM25NegativesConfig(Config):
    top_k: int = Field(default=100, description="BM25 depth mined per train query")
    split: str = Field(default="train", description="qrels split whose queries are mined")
    min_negatives: int = Field(
        default=10, description="queries with fewer negatives than this are reported in metadata"
    )
    threads: int = Field(default=1, description="bm25s search threads")


def build_negatives_assets(preset: str) -> list:
    IndexConfig = preset_config(BM25IndexConfig, "bm25_index", preset)
    NegConfig = preset_config(BM25NegativesConfig, "bm25_negatives", preset)

    @asset(
        name="bm25_index",
        pool=WAREHOUSE_POOL,
        group_name=GROUP,
        deps=["corpus"],
        code_version=code_version(IndexConfig, __name__, "jrr_pipeline.ml.sparse"),
        description="bm25s (Lucene variant, PyStemmer English, English stopwords) over the corpus",
    )
    def bm25_index(
        context: AssetExecutionContext,
        config: IndexConfig,
        warehouse: Warehouse,
        artifacts: ArtifactStore,
        dataset: DatasetSource,
    ) -> MaterializeResult:
        from jrr_pipeline.ml.sparse import BM25Config, BM25Index, corpus_texts

        corpus = warehouse.table("corpus")
        started = time.perf_counter()
        bm25_config = BM25Config(k1=config.k1, b=config.b, method=config.method,
                                 include_title=config.include_title)
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
        code_version=code_version(NegConfig, __name__, "jrr_pipeline.ml.sparse"),
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
