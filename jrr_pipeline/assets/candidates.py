"""[candidates] denoised_candidates: RocketQA denoising + RocketQAv2 hybrid lists -> `candidates`."""

import time

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from jrr_pipeline.assets.common import (
    DEVICE_POOL,
    dagster_tags,
    label_deps,
    label_settings,
    log_params,
    stage_config,
    training_tables,
)
from jrr_pipeline.ml.settings import DenoisedCandidatesSettings, Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "candidates"


def score_frame(warehouse: Warehouse, config: DenoisedCandidatesSettings,
                qrels_table: pl.DataFrame | None = None) -> pl.DataFrame:
    """Positives + merged retrieved candidates of every train query, without scores yet
    (``qrels_table``: the training qrels of a labels mode; default the qrels table)."""
    from jrr_pipeline.ml.denoise import merge_retrieved

    table = warehouse.table("qrels") if qrels_table is None else qrels_table
    positive = table.filter(pl.col("relevance") > 0).select(pl.col("query_id").cast(pl.Utf8),
                                                            pl.col("doc_id").cast(pl.Utf8), "split")
    qrels = positive.filter(pl.col("split") == "train").drop("split")
    all_positive = positive.drop("split").unique()
    negatives = warehouse.query("SELECT query_id, doc_id, rank, source FROM negatives")
    retrieved = merge_retrieved(negatives, config.top_k, config.sources)
    retrieved = retrieved.join(all_positive, on=["query_id", "doc_id"], how="anti")
    retrieved = retrieved.filter(pl.col("query_id").is_in(qrels["query_id"].unique().to_list()))
    positives = qrels.unique().with_columns(source=pl.lit("qrels"), rank=pl.lit(0, pl.UInt32))
    frame = pl.concat([
        positives.with_columns(is_positive=pl.lit(True)),
        retrieved.with_columns(pl.col("rank").cast(pl.UInt32), is_positive=pl.lit(False)),
    ], how="diagonal_relaxed")
    return frame.sort("query_id", "is_positive", "rank", "doc_id", descending=[False, True, False, False])


def build_candidates_assets(settings: dict[str, Settings]) -> list:
    Cfg = stage_config(settings["denoised_candidates"])

    @asset(
        name="denoised_candidates",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["warmup_reranker", "bm25_negatives", "dense_negatives", "corpus", "queries", "qrels",
              *label_deps(settings)],
        code_version=code_version([settings["denoised_candidates"], *label_settings(settings)],
                                  __name__, "jrr_pipeline.ml.denoise"),
        description="RocketQA denoising of BM25 + dense top-k with the warm-up reranker, then "
                    "RocketQAv2 hybrid lists -> the `candidates` table (label, source, ce_score)",
    )
    def denoised_candidates(context: AssetExecutionContext, config: Cfg, warehouse: Warehouse,
                            artifacts: ArtifactStore, dataset: DatasetSource, compute: Compute,
                            mlflow_tracking: MLflowTracking) -> MaterializeResult:
        with compute.claim(f"denoised_candidates ({context.run.run_id[:8]})",
                           on_wait=context.log.warning):
            return _denoised_candidates(context, config.settings(), warehouse, artifacts, dataset,
                                        settings["generation"], compute, mlflow_tracking)

    return [denoised_candidates]


def _denoised_candidates(context, config, warehouse, artifacts, dataset, generation, compute,
                         tracking) -> MaterializeResult:
    from jrr_pipeline.ml.denoise import calibrate, decide, denoise_stats, hybrid_lists
    from jrr_pipeline.ml.inference import autocast_dtype
    from jrr_pipeline.ml.modeling import CrossEncoderReranker
    from jrr_pipeline.ml.text import passage_texts

    name = dataset.dataset_name
    compute.apply_threads()
    queries, qrels = training_tables(warehouse, generation)
    frame = score_frame(warehouse, config, qrels)
    corpus = warehouse.table("corpus")
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    text = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    reranker = CrossEncoderReranker.from_pretrained(str(artifacts.path(name, "warmup_reranker")))
    reranker = reranker.to(compute.torch_device()).eval()
    pairs = [(text[q], passages[d]) for q, d in frame.select("query_id", "doc_id").iter_rows()]
    context.log.info(f"scoring {len(pairs)} pairs of {frame['query_id'].n_unique()} train queries "
                     f"(top-{config.top_k} of {'+'.join(config.sources)} + positives)")
    started = time.perf_counter()
    scores = reranker.predict(pairs, batch_size=config.batch_size, progress=True,
                              autocast_dtype=autocast_dtype(compute.use_bf16()))
    score_s = time.perf_counter() - started
    context.log.info(f"scored {len(pairs)} pairs in {score_s:.0f}s ({len(pairs) / max(score_s, 1e-9):.0f}/s)")
    decided = decide(calibrate(frame.with_columns(ce_score=pl.Series(scores, dtype=pl.Float64)),
                               config.calibration), config)
    candidates, list_stats = hybrid_lists(decided, config)
    warehouse.replace_tables({"candidates": candidates})

    stats = denoise_stats(decided)
    out_dir = artifacts.path(name, "denoised_candidates")
    plot = _histogram(decided, out_dir, config.tau_neg)
    with tracking.start_run(f"denoised_candidates-{name}", tags={**dagster_tags(context),
                                                                  "dataset": name}) as run:
        import mlflow

        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes())
        log_params(config.to_dict())
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(plot))
        run_id = run.info.run_id
    context.log.info(f"denoising: {stats}; lists: {list_stats}")
    return MaterializeResult(metadata={
        "dagster/row_count": candidates.height,
        "queries": list_stats["queries"],
        "pairs_scored": len(pairs),
        "pairs_per_second": round(len(pairs) / max(score_s, 1e-9), 1),
        "removed_share": stats["dropped_share"],
        "pseudo_positive_share": stats["pseudo_positive_share"],
        "denoising": MetadataValue.json(stats),
        "short_lists": list_stats["short_lists"],
        "missing_negatives": list_stats["missing_negatives"],
        "list_length": config.list_length,
        "score_histogram": MetadataValue.path(str(plot)),
        "mlflow_run_id": run_id,
    })


def _histogram(decided: pl.DataFrame, out_dir, tau_neg: float):
    """Histogram of calibrated reranker probabilities: kept negatives vs dropped vs positives."""
    from jrr_pipeline.ml.evaluation.plots import score_histogram
    from jrr_pipeline.ml.io import atomic_write_bytes

    groups = {d: decided.filter(pl.col("decision") == d)["ce_prob"].to_list()
              for d in ("negative", "dropped", "pseudo_positive", "positive")}
    path = out_dir / "ce_score_histogram.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, score_histogram(groups, threshold=tau_neg))
    return path


@asset_check(asset="denoised_candidates", blocking=True,
             description="no labelled positive of a query appears as one of its negatives")
def candidates_exclude_positives(warehouse: Warehouse) -> AssetCheckResult:
    bad = warehouse.query(
        "SELECT c.query_id, c.doc_id FROM candidates c JOIN qrels q "
        "ON c.query_id = q.query_id AND c.doc_id = q.doc_id "
        "WHERE c.label = 0 AND q.relevance > 0 LIMIT 10")
    return AssetCheckResult(passed=bad.height == 0, metadata={
        "violations_sample": MetadataValue.json([list(r) for r in bad.iter_rows()])})


@asset_check(asset="denoised_candidates",
             description="every list has the configured length, else the shortfall is counted")
def candidates_list_length(context: AssetCheckExecutionContext,
                           warehouse: Warehouse) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(AssetKey("denoised_candidates"))
    metadata = event.asset_materialization.metadata if event else {}
    target = int(metadata["list_length"].value) - 1 if "list_length" in metadata else None
    sizes = warehouse.query(  # count() is BIGINT; sum() would be a DECIMAL that JSON cannot hold
        "SELECT query_id, count(*) FILTER (WHERE label = 0) AS negatives "
        "FROM candidates GROUP BY query_id ORDER BY query_id")
    if sizes.height == 0 or target is None:
        return AssetCheckResult(passed=False, metadata={"queries": sizes.height})
    short = sizes.filter(pl.col("negatives") < target)
    return AssetCheckResult(
        passed=short.height == 0, severity=AssetCheckSeverity.WARN,
        metadata={"queries": sizes.height, "negatives_per_list": target,
                  "short_lists": short.height,
                  "missing_negatives": int((target - short["negatives"]).sum()) if short.height else 0,
                  "short_sample": MetadataValue.json(
                      {str(q): int(n) for q, n in short.head(10).iter_rows()})})


CANDIDATES_CHECKS = [candidates_exclude_positives, candidates_list_length]
