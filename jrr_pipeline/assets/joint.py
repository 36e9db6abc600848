"""[joint] joint_retriever + joint_reranker: one multi-asset, method rocketqav2 | ar2.

Starts from the warm-up checkpoints and the denoised candidate lists; the training itself is
``jrr_pipeline.ml.training.launch`` (in-process, or under torchrun when ``compute.nproc`` > 1).
One MLflow parent run per materialization, a nested run per AR2 iteration, both models registered.
"""

import time

from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from jrr_pipeline.assets.common import (
    DEVICE_POOL,
    dagster_tags,
    label_deps,
    label_settings,
    log_params,
    registered_model_name,
    run_training,
    stage_config,
    training_tables,
)
from jrr_pipeline.ml.evaluation.metrics import monitor_split
from jrr_pipeline.ml.io import atomic_directory as swap_dir
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "joint"
ASSETS = ("joint_retriever", "joint_reranker")
UPSTREAM = ["denoised_candidates", "warmup_retriever", "warmup_reranker", "corpus", "queries", "qrels"]


def build_joint_assets(settings: dict[str, Settings]) -> list:
    joint_settings = settings["joint_models"]
    JointConfig = stage_config(joint_settings)

    @multi_asset(
        name="joint_models",
        specs=[
            AssetSpec("joint_retriever", group_name=GROUP, deps=UPSTREAM + label_deps(settings),
                      description="Dual encoder trained jointly with the reranker (RocketQAv2 "
                                  "dynamic listwise distillation or AR2)"),
            AssetSpec("joint_reranker", group_name=GROUP, deps=UPSTREAM + label_deps(settings),
                      description="Cross-encoder trained jointly with the retriever"),
        ],
        pool=DEVICE_POOL,
        code_version=code_version(
            [joint_settings, *label_settings(settings)], __name__, "jrr_pipeline.ml.training.rocketqav2",
            "jrr_pipeline.ml.training.ar2", "jrr_pipeline.ml.training.lists",
            "jrr_pipeline.ml.training.launch",
            "jrr_pipeline.ml.training.loop", "jrr_pipeline.ml.losses.distillation",
            "jrr_pipeline.ml.losses.adversarial", "jrr_pipeline.ml.losses.listwise",
            "jrr_pipeline.ml.training.gradcache", "jrr_pipeline.assets.common",
            "jrr_pipeline.ml.sampling", "jrr_pipeline.ml.training.scoring"),
    )
    def joint_models(context: AssetExecutionContext, config: JointConfig, warehouse: Warehouse,
                     artifacts: ArtifactStore, dataset: DatasetSource, compute: Compute,
                     mlflow_tracking: MLflowTracking):
        with compute.claim(f"joint_models ({context.run.run_id[:8]})", on_wait=context.log.warning):
            yield from _joint(context, config.settings(), warehouse, artifacts, dataset, compute,
                              mlflow_tracking, settings["generation"])

    return [joint_models]


def _joint(context, settings, warehouse, artifacts, dataset, compute, tracking, generation):
    import mlflow

    name = dataset.dataset_name
    root = artifacts.path(name, "")
    queries, qrels = training_tables(warehouse, generation)
    tables = {"queries": queries, "qrels": qrels,
              **{t: warehouse.table(t) for t in ("corpus", "candidates")}}
    output = root / ".work" / "joint_models-output"
    models = {"retriever": str(artifacts.path(name, "warmup_retriever")),
              "reranker": str(artifacts.path(name, "warmup_reranker"))}
    tags = {**dagster_tags(context), "dataset": name, "method": settings.method}
    started = time.perf_counter()
    with tracking.start_run(f"joint_models-{settings.method}-{name}", tags=tags) as parent:
        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes())
        context.log.info(f"joint training ({settings.method}) on {tables['candidates'].height} "
                         f"candidate rows")
        result, records = run_training(context, "joint_models", settings, tables, root, output,
                                       compute, models=models,
                                       eval_split=monitor_split(tables["qrels"]))
        log_params({**settings.to_dict(), "nproc": compute.nproc})
        _log_records(records, tags)
        mlflow.log_metrics({"wall_s": time.perf_counter() - started, "lists": result["lists"]})
        for sub in ("retriever", "reranker"):
            mlflow.log_artifacts(str(output / sub), artifact_path=sub)
        run_id = parent.info.run_id
    for asset_name, sub in zip(ASSETS, ("retriever", "reranker"), strict=True):
        with swap_dir(artifacts.path(name, asset_name)) as tmp:
            tmp.rmdir()
            (output / sub).rename(tmp)
    seconds = time.perf_counter() - started
    losses = [r["metrics"]["loss"] for r in records if "loss" in r["metrics"]]
    context.log.info(f"joint training ({settings.method}): {result.get('steps')} steps on "
                     f"{result['lists']} lists in {seconds:.0f}s")
    for asset_name, sub in zip(ASSETS, ("retriever", "reranker"), strict=True):
        model_name = registered_model_name(name, asset_name)
        version = tracking.register_model(run_id, sub, model_name, {**tags, "mlflow.run_id": run_id})
        context.log.info(f"registered {model_name} version {version}")
        metadata = {
            "path": MetadataValue.path(str(artifacts.path(name, asset_name))),
            "method": settings.method if settings.method == "ar2" else f"rocketqav2/{settings.mode}",
            "mlflow_run_id": run_id,
            "registered_model": f"{model_name}:{version}",
            "lists": result["lists"],
            "steps": result.get("steps", 0),
            "train_seconds": round(seconds, 1),
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss": round(losses[-1], 4) if losses else None,
        }
        for info in result.get("iterations", []):
            if "eval_nDCG@10" in info:
                metadata.setdefault("refresh_eval_nDCG@10", []).append(round(info["eval_nDCG@10"], 4))
        yield MaterializeResult(asset_key=asset_name, metadata=metadata)


def _log_records(records: list[dict], tags: dict[str, str]) -> None:
    """Per-step losses on the parent run (AR2 phases prefixed, on a running step count) and one
    nested run per AR2 iteration with its phases' losses and its refresh's figures."""
    import mlflow

    offset = {"ranker": 0, "retriever": 0}
    last_step = {"ranker": 0, "retriever": 0}
    by_iteration: dict[int, list[dict]] = {}
    for record in records:
        phase, step, metrics = record["phase"], int(record["step"]), record["metrics"]
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if phase == "joint":
            mlflow.log_metrics(values, step=step)
            continue
        it = int(record["iteration"])
        by_iteration.setdefault(it, []).append(record)
        if phase in offset:
            if step < last_step[phase]:
                offset[phase] += last_step[phase]
            last_step[phase] = step
            mlflow.log_metrics({f"{phase}.{k}": v for k, v in values.items()},
                               step=offset[phase] + step)
    for it, items in sorted(by_iteration.items()):
        with mlflow.start_run(run_name=f"ar2-iteration-{it}", nested=True,
                              tags={**tags, "ar2.iteration": str(it)}):
            for record in items:
                values = {k: float(v) for k, v in record["metrics"].items()
                          if isinstance(v, int | float)}
                if record["phase"] == "iteration":
                    mlflow.log_metrics({f"refresh.{k}".replace("@", "_at_"): v
                                        for k, v in values.items()})
                else:
                    mlflow.log_metrics({f"{record['phase']}.{k}": v for k, v in values.items()},
                                       step=int(record["step"]))
