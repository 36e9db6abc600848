"""[warmup] warmup_retriever (DPR-style) and warmup_reranker (listwise CE) on BM25 negatives."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from jrr_pipeline.assets.common import (
    DEVICE_POOL,
    dagster_tags,
    label_deps,
    label_settings,
    log_params,
    manifest,
    registered_model_name,
    run_training,
    stage_config,
    training_tables,
)
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "warmup"
UPSTREAM = ["bm25_negatives", "corpus", "queries", "qrels"]
CORE = ("jrr_pipeline.ml.training.loop", "jrr_pipeline.ml.training.warmup",
        "jrr_pipeline.ml.training.launch", "jrr_pipeline.ml.training.checkpoint",
        "jrr_pipeline.assets.common", "jrr_pipeline.ml.training.data",
        "jrr_pipeline.ml.training.examples", "jrr_pipeline.ml.sampling")
# the retriever's negative strategies (sampler, batching, negatives settings)
STRATEGIES = ("jrr_pipeline.ml.training.warmup_plan", "jrr_pipeline.ml.training.scoring",
              "jrr_pipeline.ml.training.tas_examples", "jrr_pipeline.ml.training.negcache",
              "jrr_pipeline.ml.sampling.tas", "jrr_pipeline.ml.sampling.simans",
              "jrr_pipeline.ml.sampling.denoised", "jrr_pipeline.ml.sampling.uniform")


def _train_asset(context, asset_name, settings, warehouse, artifacts, dataset, compute, tracking,
                 generation):
    import mlflow

    name = dataset.dataset_name
    queries, qrels = training_tables(warehouse, generation)
    tables = {"queries": queries, "corpus": warehouse.table("corpus"), "qrels": qrels}
    tables["negatives"] = warehouse.query("SELECT * FROM negatives WHERE source = 'bm25'")
    output = artifacts.path(name, asset_name)
    tags = {**dagster_tags(context), "dataset": name}
    with compute.claim(f"{asset_name} ({context.run.run_id[:8]})", on_wait=context.log.warning), \
            tracking.start_run(f"{asset_name}-{name}", tags=tags) as run:
        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes())
        models = ({"reranker": str(artifacts.path(name, "warmup_reranker"))}
                  if getattr(settings, "needs_reranker", lambda: False)() else None)
        result, records = run_training(context, asset_name, settings, tables,
                                       artifacts.path(name, ""), output, compute, models=models)
        log_params({**settings.to_dict(), "nproc": compute.nproc})
        for record in records:
            mlflow.log_metrics({k: float(v) for k, v in record["metrics"].items()},
                               step=int(record["step"]))
        mlflow.log_metrics({"wall_s": float(result.get("wall_s", 0.0)),
                            "final_loss": float(result.get("final_loss") or 0.0)})
        mlflow.log_artifacts(str(output), artifact_path="checkpoint")
        run_id = run.info.run_id
    model_name = registered_model_name(name, asset_name)
    version = tracking.register_model(run_id, "checkpoint", model_name,
                                      {**tags, "mlflow.run_id": run_id})
    context.log.info(f"registered {model_name} version {version} (MLflow run {run_id})")
    losses = [r["metrics"].get("loss") for r in records if "loss" in r["metrics"]]
    context.log.info(
        f"{asset_name}: {result['step']} steps on {result.get('n_examples')} examples in "
        f"{result['wall_s']:.0f}s, loss {losses[0] if losses else float('nan'):.3f} -> "
        f"{result.get('final_loss') or float('nan'):.3f}"
    )
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(output)),
        "mlflow_run_id": run_id,
        "registered_model": f"{model_name}:{version}",
        "steps": result["step"],
        "examples": result.get("n_examples", 0),
        "train_seconds": round(result["wall_s"], 1),
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(result.get("final_loss") or 0.0, 4),
        "bf16": result.get("bf16", False),
        "world_size": result.get("world_size", 1),
        "resumed_from_step": result.get("resumed_from_step") or 0,
        **manifest(output),
    })


def build_warmup_assets(settings: dict[str, Settings]) -> list:
    retriever_settings = settings["warmup_retriever"]
    reranker_settings = settings["warmup_reranker"]
    RetrieverConfig = stage_config(retriever_settings)
    RerankerConfig = stage_config(reranker_settings)

    @asset(
        name="warmup_retriever",
        group_name=GROUP,
        pool=DEVICE_POOL,
        # the denoised sampler and TAS-Balanced margins read the warm-up reranker
        deps=UPSTREAM + (["warmup_reranker"] if retriever_settings.needs_reranker() else [])
        + label_deps(settings),
        code_version=code_version([retriever_settings, *label_settings(settings)], __name__, *CORE, *STRATEGIES,
                                  "jrr_pipeline.ml.modeling.retriever",
                                  "jrr_pipeline.ml.losses.contrastive"),
        description="Dual encoder warmed up DPR-style: InfoNCE over 1 positive + n BM25 negatives "
                    "+ in-batch (and cross-batch under DDP) negatives",
    )
    def warmup_retriever(context: AssetExecutionContext, config: RetrieverConfig,
                         warehouse: Warehouse, artifacts: ArtifactStore, dataset: DatasetSource,
                         compute: Compute, mlflow_tracking: MLflowTracking) -> MaterializeResult:
        return _train_asset(context, "warmup_retriever", config.settings(), warehouse, artifacts,
                            dataset, compute, mlflow_tracking, settings["generation"])

    @asset(
        name="warmup_reranker",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=UPSTREAM + label_deps(settings),
        code_version=code_version([reranker_settings, *label_settings(settings)], __name__, *CORE,
                                  "jrr_pipeline.ml.modeling.reranker",
                                  "jrr_pipeline.ml.losses.listwise"),
        description="Cross-encoder warmed up with listwise softmax CE over 1 positive + n BM25 "
                    "negatives",
    )
    def warmup_reranker(context: AssetExecutionContext, config: RerankerConfig,
                        warehouse: Warehouse, artifacts: ArtifactStore, dataset: DatasetSource,
                        compute: Compute, mlflow_tracking: MLflowTracking) -> MaterializeResult:
        return _train_asset(context, "warmup_reranker", config.settings(), warehouse, artifacts,
                            dataset, compute, mlflow_tracking, settings["generation"])

    return [warmup_retriever, warmup_reranker]
