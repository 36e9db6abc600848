"""[training] joint_retriever + joint_reranker: one multi-asset, method rocketqav2 | ar2.

Starts from the warm-up checkpoints and the denoised candidate lists; the training itself is
``jrr_pipeline.ml.training.joint_run`` (in-process, or under torchrun when ``compute.nproc`` > 1).
One MLflow parent run per materialization, a nested run per AR2 iteration, both models registered.
"""


import json
import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from pydantic import Field

from jrr_pipeline.assets.common import DEVICE_POOL, dagster_tags, input_data_versions
from jrr_pipeline.assets.training_launch import state_dir_for
from jrr_pipeline.assets.warmup import registered_model_name
from jrr_pipeline.ml.evaluation.metrics import monitor_split
from jrr_pipeline.ml.io import atomic_directory as swap_dir
from jrr_pipeline.presets import code_version, preset_config
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse

GROUP = "training"
ASSETS = ("joint_retriever", "joint_reranker")
UPSTREAM = ["denoised_candidates", "warmup_retriever", "warmup_reranker", "corpus", "queries", "qrels"]


class JointTrainingConfig(Config):
    method: str = Field(default="rocketqav2", description="rocketqav2 | ar2")
    mode: str = Field(default="dynamic", description="rocketqav2: dynamic (both models learn from the "
                      "KL) | static (reranker frozen: plain distillation, the ablation)")
    list_length: int = Field(default=8, description="candidates per query list (positive first)")
    batch_size: int = Field(default=8, description="query lists per optimizer step")
    epochs: int = Field(default=1, description="passes over the lists (rocketqav2)")
    max_steps: int = Field(default=0, description="rocketqav2: stop after N steps (0 = epochs "
                           "decide). One epoch of 8 x 8 on SciFact is 101 steps, 11-19 min on 2 "
                           "cores; there it gives nDCG@10 0.730-0.742, 60 steps 0.718")
    retriever_lr: float = Field(default=3e-5, description="peak AdamW lr of the retriever (it starts "
                                "from the warm-up checkpoint)")
    reranker_lr: float = Field(default=1e-4, description="peak AdamW lr of the reranker (also AR2's "
                               "ranker phase). On SciFact (cpu preset, RocketQAv2) 1e-4 gives the "
                               "reranker alone 0.692 nDCG@10 on the top-20, 3e-5 only 0.664")
    kl_temperature: float = Field(default=1.0, description="softmax temperature of the KL term")
    retriever_ce_weight: float = Field(
        default=1.0, description="rocketqav2 and ar2's retriever phase: weight of the retriever's "
                                 "own listwise CE on the labelled positive, added to the method's "
                                 "loss (0 = the paper's loss; 1.0 measured best on SciFact with the "
                                 "cpu preset)")
    retriever_in_batch: bool = Field(
        default=False, description="rocketqav2: the retriever's CE over every passage of the batch "
                                   "(other lists as in-batch negatives) instead of its own list")
    warmup_ratio: float = Field(default=0.1, description="share of steps with linear lr warm-up")
    weight_decay: float = Field(default=0.01, description="AdamW weight decay")
    max_grad_norm: float = Field(default=1.0, description="gradient clipping norm")
    passage_max_length: int = Field(default=192, description="retriever passage tokens in training")
    reranker_max_length: int = Field(default=128, description="reranker query + passage tokens")
    index_passage_max_length: int = Field(
        default=256, description="passage tokens the saved retriever encodes the corpus with")
    ar2_iterations: int = Field(default=2, description="ar2: ranker + retriever phase pairs")
    ar2_ranker_steps: int = Field(default=10, description="ar2: steps per ranker phase")
    ar2_retriever_steps: int = Field(default=20, description="ar2: steps per retriever phase")
    ar2_lambda: float = Field(default=0.5, description="ar2: weight of the adversarial term vs KL")
    ar2_refresh_every: int = Field(
        default=1, description="ar2: re-encode the corpus and re-mine the lists every N iterations "
                               "(0 = never, the no-refresh ablation)")
    ar2_refresh_top_k: int = Field(default=30, description="ar2: retrieval depth of a refresh")
    grad_cache_chunk: int = Field(
        default=0, description="rocketqav2: GradCache chunk (texts per forward; 0 = off). Same "
                               "gradients in the memory of one chunk; single process only")
    chunk_pairs: int = Field(default=0, description="reranker pairs per forward (0 = all at once)")
    bf16: str = Field(default="auto", description="auto | on | off: bf16 autocast")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in backward")
    seed: int = Field(default=42, description="seed of data order, dropout and refresh sampling")
    checkpoint_every: int = Field(default=10, description="save the full training state every N steps")
    log_every: int = Field(default=5, description="log metrics every N steps")

    def run_config(self) -> dict[str, Any]:
        if self.method not in ("rocketqav2", "ar2"):
            raise ValueError(f"joint training: method must be rocketqav2 or ar2, got {self.method!r}")
        train = {"epochs": self.epochs, "max_steps": self.max_steps or None,
                 "batch_size": self.batch_size, "lr": self.retriever_lr,
                 "weight_decay": self.weight_decay, "warmup_ratio": self.warmup_ratio,
                 "max_grad_norm": self.max_grad_norm, "bf16": self.bf16,
                 "gradient_checkpointing": self.gradient_checkpointing, "seed": self.seed,
                 "checkpoint_every": self.checkpoint_every, "log_every": self.log_every}
        return {
            "method": self.method,
            "list_length": self.list_length,
            "rocketqav2": {"mode": self.mode, "kl_temperature": self.kl_temperature,
                           "grad_cache_chunk": self.grad_cache_chunk, "chunk_pairs": self.chunk_pairs,
                           "retriever_ce_weight": self.retriever_ce_weight,
                           "retriever_in_batch": self.retriever_in_batch},
            "ar2": {"iterations": self.ar2_iterations, "ranker_steps": self.ar2_ranker_steps,
                    "retriever_steps": self.ar2_retriever_steps, "lam": self.ar2_lambda,
                    "temperature": self.kl_temperature, "refresh_every": self.ar2_refresh_every,
                    "refresh_top_k": self.ar2_refresh_top_k, "seed": self.seed,
                    "retriever_ce_weight": self.retriever_ce_weight},
            "train": train,
            "ranker_train": {"lr": self.reranker_lr},
            "reranker_lr": self.reranker_lr,
            "train_lengths": {"passage_max_length": self.passage_max_length,
                              "reranker_max_length": self.reranker_max_length},
            "serving": {"passage_max_length": self.index_passage_max_length}
            if self.index_passage_max_length else {},
        }


def build_joint_assets(preset: str) -> list:
    JointCfg = preset_config(JointTrainingConfig, "joint_models", preset)

    @multi_asset(
        name="joint_models",
        specs=[
            AssetSpec("joint_retriever", group_name=GROUP, deps=UPSTREAM,
                      description="Dual encoder trained jointly with the reranker (RocketQAv2 "
                                  "dynamic listwise distillation or AR2)"),
            AssetSpec("joint_reranker", group_name=GROUP, deps=UPSTREAM,
                      description="Cross-encoder trained jointly with the retriever"),
        ],
        pool=DEVICE_POOL,
        code_version=code_version(
            JointCfg, __name__, "jrr_pipeline.ml.training.joint", "jrr_pipeline.ml.training.adversarial",
            "jrr_pipeline.ml.training.joint_run", "jrr_pipeline.ml.training.loop",
            "jrr_pipeline.ml.losses.distillation", "jrr_pipeline.ml.losses.adversarial",
            "jrr_pipeline.ml.losses.listwise", "jrr_pipeline.ml.training.gradcache"),
    )
    def joint_models(context: AssetExecutionContext, config: JointCfg, warehouse: Warehouse,
                     artifacts: ArtifactStore, dataset: DatasetSource, compute: Compute,
                     mlflow_tracking: MLflowTracking):
        with compute.claim(f"joint_models ({context.run.run_id[:8]})", on_wait=context.log.warning):
            yield from _joint(context, config, warehouse, artifacts, dataset, compute, mlflow_tracking)

    return [joint_models]


def _joint(context, config, warehouse, artifacts, dataset, compute, tracking):
    from jrr_pipeline.ml.training.distributed import launch_torchrun
    from jrr_pipeline.ml.training.joint_run import run_joint

    name = dataset.dataset_name
    root = artifacts.path(name, "")
    settings = config.run_config()
    state = state_dir_for(root, "joint_models", {**settings, "inputs": input_data_versions(context)})
    work = state / "run"
    work.mkdir(parents=True, exist_ok=True)
    data = {}
    tables = {t: warehouse.table(t) for t in ("queries", "corpus", "qrels", "candidates")}
    for table, frame in tables.items():
        frame.write_parquet(work / f"{table}.parquet")
        data[table] = str(work / f"{table}.parquet")
    metrics_file, result_file = work / "metrics.jsonl", work / "result.json"
    metrics_file.unlink(missing_ok=True)
    result_file.unlink(missing_ok=True)
    output = root / ".work" / "joint_models-output"
    run_config = {**settings, "retriever": str(artifacts.path(name, "warmup_retriever")),
                  "reranker": str(artifacts.path(name, "warmup_reranker")), "data": data,
                  "eval_split": _monitor_split(tables["qrels"]), "output_dir": str(output),
                  "work_dir": str(state / "train"), "metrics_file": str(metrics_file),
                  "result_file": str(result_file), "progress": True}
    config_path = work / "joint.json"
    config_path.write_text(json.dumps(run_config, indent=2))
    tags = {**dagster_tags(context), "dataset": name, "method": config.method}
    started = time.perf_counter()
    with tracking.start_run(f"joint_models-{config.method}-{name}", tags=tags) as parent:
        import mlflow

        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes())
        compute.apply_threads()
        context.log.info(f"joint training ({config.method}) on {tables['candidates'].height} "
                         f"candidate rows, config {config_path}")
        if compute.nproc > 1:
            proc = launch_torchrun(compute.nproc, "jrr_pipeline.ml.training.joint_run",
                                   ["--config", str(config_path)])
            if proc.returncode != 0:
                raise RuntimeError(f"torchrun joint training failed with exit code {proc.returncode}")
            result = json.loads(result_file.read_text())
        else:
            result = run_joint(config_path)
        records = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()] \
            if metrics_file.exists() else []
        flat = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in settings.items()}
        mlflow.log_params({k: str(v)[:500] for k, v in {**flat, "nproc": compute.nproc}.items()})
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
    context.log.info(f"joint training ({config.method}): {result.get('steps')} steps on "
                     f"{result['lists']} lists in {seconds:.0f}s")
    for asset_name, sub in zip(ASSETS, ("retriever", "reranker"), strict=True):
        model_name = registered_model_name(name, asset_name)
        version = tracking.register_model(run_id, sub, model_name, {**tags, "mlflow.run_id": run_id})
        context.log.info(f"registered {model_name} version {version}")
        metadata = {
            "path": MetadataValue.path(str(artifacts.path(name, asset_name))),
            "method": config.method if config.method == "ar2" else f"rocketqav2/{config.mode}",
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


def _monitor_split(qrels) -> str:
    """AR2 refreshes are evaluated on dev when there is one (monitoring only, no model selection)."""
    return monitor_split(qrels)


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
