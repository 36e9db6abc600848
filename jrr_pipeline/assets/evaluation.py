"""[evaluation] evaluation_report: every system side by side on the test split (dev if none)."""


import time

import polars as pl
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from jrr_pipeline.assets.common import DEVICE_POOL, dagster_tags, stage_config
from jrr_pipeline.assets.dense import WARMUP_INDEX
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.ml.text import query_texts
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "evaluation"
RECALL_CURVE_KS = (1, 5, 10, 20, 50, 100)


def mlflow_metric_name(system: str, measure: str) -> str:
    """MLflow allows neither '@' nor '+': 'a+b', 'nDCG@10' -> 'a_plus_b.nDCG_at_10'."""
    return f"{system.replace('+', '_plus_')}.{measure.replace('@', '_at_')}"


def bm25_run(
    warehouse: Warehouse, artifacts: ArtifactStore, dataset: str, query_ids: list[str], depth: int,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    from jrr_pipeline.ml.sparse import BM25Index, run_from_search

    index = BM25Index.load(artifacts.path(dataset, "bm25_index"))
    texts = _query_texts(warehouse, query_ids)
    doc_ids, scores = index.search(texts, k=depth, n_threads=threads)
    return run_from_search(query_ids, doc_ids, scores)


def dense_run(artifacts: ArtifactStore, dataset: str, retriever_asset: str, index_artifact: str,
              texts: list[str], query_ids: list[str], depth: int, compute: Compute):
    from jrr_pipeline.ml.index import load_index, search
    from jrr_pipeline.ml.inference import encode_queries, load_retriever
    from jrr_pipeline.ml.sparse import run_from_search

    retriever = load_retriever(artifacts.path(dataset, retriever_asset), compute.torch_device())
    index, doc_ids = load_index(artifacts.path(dataset, index_artifact))
    hits, scores = search(index, doc_ids, encode_queries(retriever, texts, compute.use_bf16()), depth)
    return run_from_search(query_ids, hits, scores)


def rerank_run(artifacts: ArtifactStore, dataset: str, reranker_asset: str, warehouse: Warehouse,
               first_stage: dict[str, dict[str, float]], texts: dict[str, str], depth: int,
               batch_size: int, compute: Compute, fusion_weight: float = 1.0,
               ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Rescore each query's top-``depth`` of ``first_stage`` with the cross-encoder.

    Returns (fused run, reranker-only run); see ``jrr_pipeline.ml.fusion``."""
    from jrr_pipeline.ml import fusion
    from jrr_pipeline.ml.inference import autocast_dtype
    from jrr_pipeline.ml.modeling import CrossEncoderReranker
    from jrr_pipeline.ml.text import passage_texts

    reranker = CrossEncoderReranker.from_pretrained(str(artifacts.path(dataset, reranker_asset)))
    reranker = reranker.to(compute.torch_device()).eval()
    corpus = warehouse.table("corpus")
    passages = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
    return fusion.rerank_run(reranker, first_stage, texts, passages, depth, fusion_weight,
                             batch_size=batch_size, progress=True,
                             autocast_dtype=autocast_dtype(compute.use_bf16()))


def _query_texts(warehouse: Warehouse, query_ids: list[str]) -> list[str]:
    return query_texts(warehouse.table("queries"), query_ids)


def build_evaluation_assets(settings: dict[str, Settings]) -> list:
    EvalConfig = stage_config(settings["evaluation_report"])

    @asset(
        name="evaluation_report",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["bm25_index", "dense_negatives", "warmup_retriever", "warmup_reranker", "faiss_index",
              "joint_retriever", "joint_reranker", "queries", "qrels"],
        code_version=code_version(
            settings["evaluation_report"], __name__, "jrr_pipeline.ml.evaluation.metrics",
            "jrr_pipeline.ml.evaluation.report", "jrr_pipeline.ml.index",
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
        compute: Compute,
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

        compute.apply_threads()
        texts = _query_texts(warehouse, query_ids)
        text_of = dict(zip(query_ids, texts, strict=True))
        systems_to_run = {
            "bm25": (("bm25_index",), lambda: {"bm25": bm25_run(
                warehouse, artifacts, name, query_ids, config.depth, config.bm25_threads)}),
            "warmup_retriever": (("warmup_retriever", WARMUP_INDEX), lambda: {
                "warmup_retriever": dense_run(artifacts, name, "warmup_retriever", WARMUP_INDEX,
                                              texts, query_ids, config.depth, compute)}),
            "warmup_retriever+reranker": (("warmup_reranker",), lambda: dict(zip(
                ("warmup_retriever+reranker", "warmup_retriever+reranker_ce_only"),
                rerank_run(artifacts, name, "warmup_reranker", warehouse, runs["warmup_retriever"],
                           text_of, config.rerank_depth, config.rerank_batch_size, compute,
                           config.rerank_fusion_weight), strict=True))),
            "joint_retriever": (("joint_retriever", "faiss_index"), lambda: {
                "joint_retriever": dense_run(artifacts, name, "joint_retriever", "faiss_index",
                                             texts, query_ids, config.depth, compute)}),
            "joint_retriever+reranker": (("joint_reranker",), lambda: dict(zip(
                ("joint_retriever+reranker", "joint_retriever+reranker_ce_only"),
                rerank_run(artifacts, name, "joint_reranker", warehouse, runs["joint_retriever"],
                           text_of, config.rerank_depth, config.rerank_batch_size, compute,
                           config.rerank_fusion_weight), strict=True))),
        }
        with compute.claim(f"evaluation_report ({context.run.run_id[:8]})", on_wait=context.log.warning):
            for system, (needs, make_run) in systems_to_run.items():
                missing = [a for a in needs if not artifacts.path(name, a).exists()]
                first_stage = system.split("+")[0]
                if missing or (system.endswith("+reranker") and first_stage not in runs):
                    context.log.warning(f"{system}: skipped, no artifact {missing} yet")
                    continue
                started = time.perf_counter()
                runs.update(make_run())
                timings[system] = time.perf_counter() - started
                context.log.info(f"{system}: {len(query_ids)} {split} queries in {timings[system]:.1f}s")

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
            mlflow_tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes(),
                                              context="evaluation")
            mlflow.log_params({"dataset": name, "split": split, "depth": config.depth,
                               "num_queries": len(query_ids)})
            for sys, values in systems.items():
                mlflow.log_metrics({mlflow_metric_name(sys, m): v for m, v in values.items()})
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
