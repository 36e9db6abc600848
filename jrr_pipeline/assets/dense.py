"""[negatives] dense_negatives: ANCE-style negatives from the warm-up retriever's FAISS index."""

import time

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from jrr_pipeline.assets.common import DEVICE_POOL, stage_config
from jrr_pipeline.ml.inference import autocast_dtype, encode_queries, load_retriever
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "negatives"
WARMUP_INDEX = "warmup_index"  # artifact folder of the warm-up retriever's corpus index


def build_dense_assets(settings: dict[str, Settings]) -> list:
    DenseCfg = stage_config(settings["dense_negatives"])

    @asset(
        name="dense_negatives",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["warmup_retriever", "corpus", "queries", "qrels"],
        code_version=code_version(settings["dense_negatives"], __name__, "jrr_pipeline.ml.index"),
        description="Encode the corpus with the warm-up retriever, index it with FAISS (kept as the "
                    "warmup_index artifact), mine top-k per train query minus positives -> negatives",
    )
    def dense_negatives(context: AssetExecutionContext, config: DenseCfg, warehouse: Warehouse,
                        artifacts: ArtifactStore, dataset: DatasetSource,
                        compute: Compute) -> MaterializeResult:
        with compute.claim(f"dense_negatives ({context.run.run_id[:8]})", on_wait=context.log.warning):
            return _dense_negatives(context, config.settings(), warehouse, artifacts, dataset,
                                    compute)

    return [dense_negatives]


def _dense_negatives(context, config, warehouse, artifacts, dataset, compute) -> MaterializeResult:
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

    qrels = warehouse.table("qrels")
    split_qrels = qrels.filter(pl.col("split") == config.split)
    query_ids = sorted(split_qrels["query_id"].unique().to_list())
    queries = warehouse.table("queries")
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
    })
