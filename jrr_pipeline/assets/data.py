"""[data] corpus, queries, qrels: read a dataset directory and store it in DuckDB in one transaction."""



from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    asset_check,
    multi_asset,
    observable_source_asset,
)

from jrr_pipeline.assets.common import WAREHOUSE_POOL, frame_version, stage_config
from jrr_pipeline.ml.data import duplicate_ids, empty_texts, split_overlap, unresolved_qrels
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import DatasetSource, Warehouse
from jrr_pipeline.resources.dataset import files_digest
from jrr_pipeline.settings import code_version

GROUP = "data"
SAMPLE = 10  # ids shown in check metadata


@observable_source_asset(name="dataset_files", group_name=GROUP, description=(
    "The dataset directory's input files; the data version is the sha256 of their contents, so an "
    "edited file (not a touched one) makes the data tables stale."
))
def dataset_files(context, dataset: DatasetSource) -> ObserveResult:
    hashes = dataset.content_hashes()
    context.log.info(f"{dataset.directory}: {len(hashes)} files hashed")
    return ObserveResult(data_version=DataVersion(files_digest(hashes)), metadata={
        "directory": MetadataValue.path(str(dataset.directory)),
        "files": MetadataValue.json(hashes),  # path -> sha256: where `jrr lineage` ends
    })


def build_data_assets(settings: dict[str, Settings]) -> list:
    modules = (__name__, "jrr_pipeline.ml.data", "jrr_pipeline.ml.data.splits")
    version = code_version(settings["dataset"], *modules)
    QrelsConfig = stage_config(settings["qrels"])

    @multi_asset(
        name="dataset_tables",
        pool=WAREHOUSE_POOL,
        group_name=GROUP,
        specs=[
            AssetSpec("corpus", deps=["dataset_files"], code_version=version,
                      description="corpus(doc_id, title, text)"),
            AssetSpec("queries", deps=["dataset_files"], code_version=version,
                      description="queries(query_id, text)"),
            AssetSpec("qrels", deps=["dataset_files"],
                      code_version=code_version([settings["dataset"], settings["qrels"]], *modules),
                      description="qrels(query_id, doc_id, relevance, split); split dev is "
                                  "carved from train when the dataset has none"),
        ],
    )
    def dataset_tables(context: AssetExecutionContext, config: QrelsConfig,
                       dataset: DatasetSource, warehouse: Warehouse):
        """Read the dataset (BEIR, MS MARCO TSV or CSV/Parquet), validate it, carve a dev split
        from train when it has none, and replace the three tables.

        Any reading error names file, line and field; the previous tables stay as they were.
        """
        from jrr_pipeline.ml.data.splits import carve_dev

        data = dataset.load()
        qrels_settings = config.settings()
        qrels, dev_origin = carve_dev(data.qrels, qrels_settings.dev_fraction,
                                      qrels_settings.dev_min_queries, qrels_settings.dev_seed)
        frames = {"corpus": data.corpus, "queries": data.queries, "qrels": qrels}
        warehouse.replace_tables(frames)
        splits = qrels.group_by("split").len().sort("split")
        split_counts = {row["split"]: row["len"] for row in splits.iter_rows(named=True)}
        context.log.info(
            f"{data.name}: {data.corpus.height} docs, {data.queries.height} queries, "
            f"qrels per split {split_counts}"
        )
        common = {"dataset": data.name, "data_dir": str(dataset.directory)}
        yield MaterializeResult(
            asset_key="corpus",
            data_version=DataVersion(frame_version(data.corpus)),
            metadata={**common, "dagster/row_count": data.corpus.height},
        )
        yield MaterializeResult(
            asset_key="queries",
            data_version=DataVersion(frame_version(data.queries)),
            metadata={**common, "dagster/row_count": data.queries.height},
        )
        yield MaterializeResult(
            asset_key="qrels",
            data_version=DataVersion(frame_version(qrels)),
            metadata={
                **common,
                "dagster/row_count": qrels.height,
                "dev_origin": dev_origin or "none",
                "rows_per_split": MetadataValue.json(split_counts),
                "queries_per_split": MetadataValue.json({
                    r["split"]: r["n"]
                    for r in qrels.group_by("split").agg(n=_n_unique("query_id")).iter_rows(named=True)
                }),
            },
        )

    return [dataset_tables]


def _n_unique(col: str):
    import polars as pl

    return pl.col(col).n_unique()


def _result(failures: list[str], severity: AssetCheckSeverity, what: str, total: int) -> AssetCheckResult:
    return AssetCheckResult(
        passed=not failures,
        severity=severity,
        metadata={
            "count": len(failures),
            "total": total,
            "what": what,
            "examples": MetadataValue.json(failures[:SAMPLE]),
        },
    )


@asset_check(asset="corpus", blocking=True, description="doc_id is unique")
def corpus_unique_ids(warehouse: Warehouse) -> AssetCheckResult:
    corpus = warehouse.query("SELECT doc_id FROM corpus")
    return _result(duplicate_ids(corpus, "doc_id"), AssetCheckSeverity.ERROR, "duplicate doc ids", corpus.height)


@asset_check(asset="corpus", description="documents with empty text (warning with counts)")
def corpus_nonempty_text(warehouse: Warehouse) -> AssetCheckResult:
    corpus = warehouse.query("SELECT doc_id, text FROM corpus")
    return _result(empty_texts(corpus, "doc_id"), AssetCheckSeverity.WARN, "empty documents", corpus.height)


@asset_check(asset="queries", blocking=True, description="query_id is unique")
def queries_unique_ids(warehouse: Warehouse) -> AssetCheckResult:
    queries = warehouse.query("SELECT query_id FROM queries")
    return _result(duplicate_ids(queries, "query_id"), AssetCheckSeverity.ERROR, "duplicate query ids", queries.height)


@asset_check(asset="queries", description="queries with empty text (warning with counts)")
def queries_nonempty_text(warehouse: Warehouse) -> AssetCheckResult:
    queries = warehouse.query("SELECT query_id, text FROM queries")
    return _result(empty_texts(queries, "query_id"), AssetCheckSeverity.WARN, "empty queries", queries.height)


@asset_check(asset="qrels", additional_deps=["corpus", "queries"], blocking=True,
             description="every qrels query id and doc id resolves")
def qrels_ids_resolve(warehouse: Warehouse) -> AssetCheckResult:
    qrels = warehouse.table("qrels")
    unknown = unresolved_qrels(qrels, warehouse.table("corpus"), warehouse.table("queries"))
    failures = [f"doc:{d}" for d in unknown.get("doc_id", [])] + [
        f"query:{q}" for q in unknown.get("query_id", [])
    ]
    return _result(failures, AssetCheckSeverity.ERROR, "unresolved qrels ids", qrels.height)


@asset_check(asset="qrels", blocking=True,
             description="no test query is also in the train or the dev split")
def qrels_no_split_leak(warehouse: Warehouse) -> AssetCheckResult:
    qrels = warehouse.table("qrels")
    leaked = split_overlap(qrels, "train", "test") + split_overlap(qrels, "dev", "test")
    return _result(list(dict.fromkeys(leaked)), AssetCheckSeverity.ERROR,
                   "queries in test and in train or dev", qrels["query_id"].n_unique())


DATA_CHECKS = [
    corpus_unique_ids,
    corpus_nonempty_text,
    queries_unique_ids,
    queries_nonempty_text,
    qrels_ids_resolve,
    qrels_no_split_leak,
]
