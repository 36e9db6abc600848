"""[evaluation] evaluation_report: every system side by side on the test split (dev if none)."""


import time

import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from jrr_pipeline.assets.common import dagster_tags
from jrr_pipeline.presets import code_version, preset_config
from jrr_pipeline.resources import ArtifactStore, DatasetSource, MLflowTracking, Warehouse

GROUP = "evaluation"
RECALL_CURVE_KS = (1, 5, 10, 20, 50, 100)


class EvaluationConfig(Config):
    depth: int = Field(default=100, description="retrieval depth per query (and rerank depth)")
    bm25_threads: int = Field(default=1, description="bm25s search threads")


def bm25_run(
    warehouse: Warehouse, artifacts: ArtifactStore, dataset: str, query_ids: list[str], depth: int,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    from jrr_pipeline.ml.sparse import BM25Index, run_from_search

    index = BM25Index.load(artifacts.path(dataset, "bm25_index"))
    texts = _query_texts(warehouse, query_ids)
    doc_ids, scores = index.search(texts, k=depth, n_threads=threads)
    return run_from_search(query_ids, doc_ids, scores)


def _query_texts(warehouse: Warehouse, query_ids: list[str]) -> list[str]:
    queries = warehouse.table("queries")
    lookup = dict(zip(queries["query_id"].to_list(), queries["text"].to_list(), strict=True))
    return [lookup[q] for q in query_ids]


def build_evaluation_assets(preset: str) -> list:
    EvalConfig = preset_config(EvaluationConfig, "evaluation_report", preset)

    @asset(
        name="evaluation_report",
        group_name=GROUP,
        deps=["bm25_index", "queries", "qrels"],
        code_version=code_version(
            EvalConfig, __name__, "jrr_pipeline.ml.evaluation.metrics", "jrr_pipeline.ml.evaluation.report"
        ),
        description="nDCG@10, RR@10, R@k, MAP of every system (ir-measures) -> JSON, markdown, plots, MLflow",
    )
    def evaluation_report(
        context: AssetExecutionContext,
        config: EvalConfig,
        warehouse: Warehouse,
        artifacts: ArtifactStore,
        dataset: DatasetSource,
        mlflow_tracking: MLflowTracking,
    ) -> MaterializeResult:
        from jrr_pipeline.ml.evaluation import (
            DEFAULT_MEASURES,
            eval_split,
            evaluate,
            markdown_table,
            per_query,
            write_report,
        )

        name = dataset.dataset_name
        qrels = warehouse.table("qrels")
        split = eval_split(qrels)
        query_ids = sorted(qrels.filter(pl.col("split") == split)["query_id"].unique().to_list())
        runs: dict[str, dict[str, dict[str, float]]] = {}
        timings: dict[str, float] = {}

        started = time.perf_counter()
        runs["bm25"] = bm25_run(warehouse, artifacts, name, query_ids, config.depth, config.bm25_threads)
        timings["bm25"] = time.perf_counter() - started
        context.log.info(f"bm25: {len(query_ids)} {split} queries in {timings['bm25']:.2f}s")

        systems = {sys: evaluate(run, qrels, DEFAULT_MEASURES, split=split) for sys, run in runs.items()}
        curve_measures = [f"R@{k}" for k in RECALL_CURVE_KS]
        curves = {
            sys: {k: v for k, v in zip(RECALL_CURVE_KS, evaluate(run, qrels, curve_measures, split=split).values(), strict=True)}
            for sys, run in runs.items()
        }
        per_query_ndcg = {sys: per_query(run, qrels, "nDCG@10", split=split) for sys, run in runs.items()}

        with mlflow_tracking.start_run(f"evaluation-{name}", tags={
            **dagster_tags(context), "dataset": name, "split": split,
        }) as run:
            import mlflow

            run_id = run.info.run_id
            mlflow.log_params({"dataset": name, "split": split, "depth": config.depth,
                               "num_queries": len(query_ids)})
            for sys, values in systems.items():
                mlflow.log_metrics({f"{sys}.{m.replace('@', '_at_')}": v for m, v in values.items()})
            paths = write_report(
                artifacts.report_dir(name), name, split, systems, run_id,
                extra={"num_queries": len(query_ids), "depth": config.depth,
                       "seconds": {k: round(v, 3) for k, v in timings.items()}},
                per_query=per_query_ndcg, recall_curves=curves,
            )
            mlflow.log_artifacts(str(artifacts.report_dir(name)), artifact_path="report")

        rows = [
            (run_id, name, sys, split, measure, float(value))
            for sys, values in systems.items() for measure, value in values.items()
        ]
        metrics = pl.DataFrame(rows, schema=["run_id", "dataset", "system", "split", "measure", "value"],
                               orient="row").with_columns(created_at=pl.lit(_now()))
        warehouse.append("metrics", metrics)

        table = markdown_table(systems)
        context.log.info(f"evaluation of {name} ({split}):\n{table}")
        metadata = {
            "report": MetadataValue.md(table),
            "mlflow_run_id": run_id,
            "split": split,
            "num_queries": len(query_ids),
            "report_path": MetadataValue.path(str(paths["json"])),
        }
        for sys, values in systems.items():
            metadata[f"{sys}/nDCG@10"] = round(values["nDCG@10"], 4)
        return MaterializeResult(metadata=metadata)

    return [evaluation_report]


def _now():
    from datetime import datetime

    return datetime.now().replace(microsecond=0)
