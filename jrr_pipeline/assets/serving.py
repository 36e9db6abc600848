"""[serving] faiss_index: the corpus encoded by the joint retriever, indexed with FAISS."""


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

from jrr_pipeline.assets.common import DEVICE_POOL, manifest, stage_config
from jrr_pipeline.ml.inference import autocast_dtype, load_retriever
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "serving"


def build_serving_assets(settings: dict[str, Settings]) -> list:
    IndexCfg = stage_config(settings["faiss_index"])

    @asset(
        name="faiss_index",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["joint_retriever", "corpus"],
        code_version=code_version(settings["faiss_index"], __name__, "jrr_pipeline.ml.index",
                                  "jrr_pipeline.ml.shards"),
        description="Corpus embeddings of the joint retriever in a FAISS index (what `jrr search` "
                    "and the report's joint rows search)",
    )
    def faiss_index(context: AssetExecutionContext, config: IndexCfg, warehouse: Warehouse,
                    artifacts: ArtifactStore, dataset: DatasetSource,
                    compute: Compute) -> MaterializeResult:
        from jrr_pipeline.ml.index import build_index, encode_corpus, save_index

        name = dataset.dataset_name
        with compute.claim(f"faiss_index ({context.run.run_id[:8]})", on_wait=context.log.warning):
            compute.apply_threads()
            retriever = load_retriever(artifacts.path(name, "joint_retriever"), compute.torch_device())
            corpus = warehouse.table("corpus")
            dtype = autocast_dtype(compute.use_bf16())
            shards = config.settings().shard_count(corpus.height)
            if shards > 1:
                with artifacts.staging(name, "faiss_index") as tmp:
                    dim, encode_s = build_shards(tmp, retriever, corpus, config, shards, dtype)
            else:
                started = time.perf_counter()
                embeddings = encode_corpus(retriever, corpus, batch_size=config.batch_size,
                                           progress=True, autocast_dtype=dtype)
                encode_s = time.perf_counter() - started
                dim = int(embeddings.shape[1])
                index = build_index(embeddings, factory=config.factory,
                                    hnsw_ef_search=config.hnsw_ef_search, nprobe=config.nprobe)
                with artifacts.staging(name, "faiss_index") as tmp:
                    save_index(index, corpus["doc_id"].to_list(), tmp)
        context.log.info(f"faiss_index: {corpus.height} passages encoded in {encode_s:.0f}s "
                         f"({corpus.height / max(encode_s, 1e-9):.1f}/s), {config.factory}"
                         f"{f' in {shards} shards' if shards > 1 else ''}")
        return MaterializeResult(metadata={
            "path": MetadataValue.path(str(artifacts.path(name, "faiss_index"))),
            "passages": corpus.height,
            "dimension": dim,
            "factory": config.factory,
            "shards": shards,
            "encode_seconds": round(encode_s, 1),
            "passages_per_second": round(corpus.height / max(encode_s, 1e-9), 1),
            "passage_max_length": retriever.config.passage_max_length,
            **manifest(artifacts.path(name, "faiss_index")),
        })

    return [faiss_index]


def build_shards(folder, retriever, corpus, config, shards: int, dtype) -> tuple[int, float]:
    """Encode and index the corpus one slice per shard (``shards`` slices) into ``folder``
    (ml/shards.py): only one slice's embeddings are in memory at a time. Returns (dimension,
    seconds spent encoding)."""
    from jrr_pipeline.ml.index import encode_corpus
    from jrr_pipeline.ml.shards import ShardWriter, corpus_slices

    writer, encode_s = None, 0.0
    for start, end in corpus_slices(corpus.height, shards):
        part = corpus.slice(start, end - start)
        started = time.perf_counter()
        vectors = encode_corpus(retriever, part, batch_size=config.batch_size, progress=True,
                                autocast_dtype=dtype)
        encode_s += time.perf_counter() - started
        writer = writer or ShardWriter(folder, vectors.shape[1], config.factory,
                                       hnsw_ef_search=config.hnsw_ef_search, nprobe=config.nprobe)
        writer.add(vectors, part["doc_id"].to_list())
    writer.close()
    return writer.dim, encode_s


@asset_check(asset="faiss_index", blocking=True,
             description="The index holds one vector per corpus passage, ids in corpus order")
def faiss_index_matches_corpus(warehouse: Warehouse, artifacts: ArtifactStore,
                               dataset: DatasetSource) -> AssetCheckResult:
    from jrr_pipeline.ml.index import load_index

    index, doc_ids = load_index(artifacts.path(dataset.dataset_name, "faiss_index"))
    corpus_ids = warehouse.table("corpus")["doc_id"].to_list()
    ok = index.ntotal == len(corpus_ids) and doc_ids == corpus_ids
    return AssetCheckResult(passed=ok, severity=AssetCheckSeverity.ERROR, metadata={
        "vectors": int(index.ntotal), "corpus_rows": len(corpus_ids),
        "ids_in_corpus_order": doc_ids == corpus_ids})


SERVING_CHECKS = [faiss_index_matches_corpus]
