"""[evaluation] evaluation_report: every system side by side on the test split (dev if none),
and on the dev split that model selection reads (``selection`` block of the report)."""


import time
from dataclasses import dataclass

import polars as pl
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from jrr_pipeline.assets.common import DEVICE_POOL, dagster_tags, label_settings, stage_config
from jrr_pipeline.assets.negatives import WARMUP_INDEX
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.ml.text import query_texts
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "evaluation"
RECALL_CURVE_KS = (1, 5, 10, 20, 50, 100)


def mlflow_metric_name(system: str, measure: str, prefix: str = "") -> str:
    """MLflow allows neither '@' nor '+': 'a+b', 'nDCG@10' -> 'a_plus_b.nDCG_at_10' (with a
    prefix 'dev': 'dev.a_plus_b.nDCG_at_10')."""
    name = f"{system.replace('+', '_plus_')}.{measure.replace('@', '_at_')}"
    return f"{prefix}.{name}" if prefix else name


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

    Returns (fused run, reranker-only run), each followed by the first stage's tail below
    ``depth``; see ``jrr_pipeline.ml.fusion``."""
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


@dataclass(frozen=True)
class System:
    """A row of the report: a first-stage retriever (with its index) or a reranked one."""

    name: str
    needs: tuple[str, ...]  # artifacts that must exist
    retriever: str = ""  # dense: the retriever asset; "" for bm25
    index: str = ""
    reranker: str = ""  # reranked: the reranker asset over the first stage `name` minus "+reranker"

    @property
    def first_stage(self) -> str:
        return self.name.removesuffix("+reranker")


SYSTEMS = (
    System("bm25", ("bm25_index",)),
    System("warmup_retriever", ("warmup_retriever", WARMUP_INDEX), "warmup_retriever", WARMUP_INDEX),
    System("warmup_retriever+reranker", ("warmup_reranker",), reranker="warmup_reranker"),
    System("joint_retriever", ("joint_retriever", "faiss_index"), "joint_retriever", "faiss_index"),
    System("joint_retriever+reranker", ("joint_reranker",), reranker="joint_reranker"),
)


def system_runs(context, settings, warehouse: Warehouse, artifacts: ArtifactStore, dataset: str,
                query_ids: list[str], compute: Compute) -> tuple[dict, dict[str, float]]:
    """Every system's run over ``query_ids`` ({system: {qid: {doc: score}}}; a reranked system
    also gives ``<system>_ce_only``, the reranker alone) and the seconds each took. A system
    whose artifacts do not exist yet is skipped with a warning."""
    texts = _query_texts(warehouse, query_ids)
    runs: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    for system in SYSTEMS:
        missing = [a for a in system.needs if not artifacts.path(dataset, a).exists()]
        if missing or (system.reranker and system.first_stage not in runs):
            context.log.warning(f"{system.name}: skipped, no artifact {missing} yet")
            continue
        started = time.perf_counter()
        if system.reranker:
            fused, alone = rerank_run(artifacts, dataset, system.reranker, warehouse,
                                      runs[system.first_stage], dict(zip(query_ids, texts,
                                                                         strict=True)),
                                      settings.rerank_depth, settings.rerank_batch_size, compute,
                                      settings.rerank_fusion_weight)
            runs.update({system.name: fused, f"{system.name}_ce_only": alone})
        elif system.retriever:
            runs[system.name] = dense_run(artifacts, dataset, system.retriever, system.index,
                                          texts, query_ids, settings.depth, compute)
        else:
            runs[system.name] = bm25_run(warehouse, artifacts, dataset, query_ids,
                                         settings.depth, settings.bm25_threads)
        timings[system.name] = time.perf_counter() - started
        context.log.info(f"{system.name}: {len(query_ids)} queries in "
                         f"{timings[system.name]:.1f}s")
    return runs, timings


def split_measures(runs: dict, qrels: pl.DataFrame, split: str) -> dict[str, dict[str, float]]:
    """{system: {measure: mean}} of every run over the queries of ``split``."""
    from jrr_pipeline.ml.evaluation import DEFAULT_MEASURES, evaluate

    return {name: evaluate(run, qrels, DEFAULT_MEASURES, split=split) for name, run in runs.items()}


def score_runs(runs: dict, qrels: pl.DataFrame, split: str) -> tuple[dict, dict, dict]:
    """(measures per system, recall@k curve per system, per-query nDCG@10 per system)."""
    from jrr_pipeline.ml.evaluation import evaluate, per_query

    systems = split_measures(runs, qrels, split)
    curve_measures = [f"R@{k}" for k in RECALL_CURVE_KS]
    curves = {name: dict(zip(RECALL_CURVE_KS,
                             evaluate(run, qrels, curve_measures, split=split).values(),
                             strict=True))
              for name, run in runs.items()}
    per_query_ndcg = {name: per_query(run, qrels, "nDCG@10", split=split)
                      for name, run in runs.items()}
    return systems, curves, per_query_ndcg


def split_query_ids(qrels: pl.DataFrame, split: str) -> list[str]:
    return sorted(qrels.filter(pl.col("split") == split)["query_id"].unique().to_list())


def dev_origin(context) -> str:
    """Where the dev split came from, as the ``qrels`` asset's latest materialization says
    (metadata ``dev_origin``); "dataset" when it does not say."""
    event = context.instance.get_latest_materialization_event(AssetKey("qrels"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    value = metadata.get("dev_origin")
    return str(getattr(value, "value", value)) if value is not None else "dataset"


def build_evaluation_assets(settings: dict[str, Settings]) -> list:
    EvalConfig = stage_config(settings["evaluation_report"])
    labels = settings["generation"].labels  # which training queries the models saw

    @asset(
        name="evaluation_report",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["bm25_index", "dense_negatives", "warmup_retriever", "warmup_reranker", "faiss_index",
              "joint_retriever", "joint_reranker", "queries", "qrels"],
        code_version=code_version(
            [settings["evaluation_report"], *label_settings(settings)], __name__,
            "jrr_pipeline.ml.evaluation.metrics", "jrr_pipeline.ml.evaluation.report", "jrr_pipeline.ml.index", "jrr_pipeline.ml.fusion",
            "jrr_pipeline.ml.ranking",
        ),
        description="nDCG@10, RR@10, R@k, MAP of every system (ir-measures) -> JSON, markdown, "
                    "plots, MLflow",
    )
    def evaluation_report(context: AssetExecutionContext, config: EvalConfig,
                          warehouse: Warehouse, artifacts: ArtifactStore, dataset: DatasetSource,
                          mlflow_tracking: MLflowTracking, compute: Compute) -> MaterializeResult:
        from jrr_pipeline.ml.evaluation import eval_split, selection_info

        settings = config.settings()
        name = dataset.dataset_name
        qrels = warehouse.table("qrels")
        split = eval_split(qrels)
        selection = selection_info(qrels, dev_origin(context))
        dev = selection["split"] if selection["split"] not in (None, split) else None
        query_ids = split_query_ids(qrels, split)
        dev_ids = split_query_ids(qrels, dev) if dev else []
        compute.apply_threads()
        with compute.claim(f"evaluation_report ({context.run.run_id[:8]})",
                           on_wait=context.log.warning):
            runs, timings = system_runs(context, settings, warehouse, artifacts, name,
                                        sorted({*query_ids, *dev_ids}), compute)
        systems, curves, per_query_ndcg = score_runs(runs, qrels, split)
        dev_systems = split_measures(runs, qrels, dev) if dev else None
        extra = {"labels": labels, "num_queries": len(query_ids), "depth": settings.depth,
                 "rerank_depth": settings.rerank_depth,
                 "rerank_fusion_weight": settings.rerank_fusion_weight,
                 "timed_queries": len({*query_ids, *dev_ids}),
                 "seconds": {k: round(v, 3) for k, v in timings.items()}}
        run_id, paths = _record(context, settings, name, split, systems, curves, per_query_ndcg,
                                extra, artifacts, dataset, mlflow_tracking, selection, dev_systems)
        by_split = {split: systems, **({dev: dev_systems} if dev else {})}
        warehouse.append("metrics", _metric_rows(run_id, name, by_split))
        if not dev:
            context.log.info(f"no dev figures: {selection['note']}")
        return MaterializeResult(metadata={
            "mlflow_run_id": run_id, "split": split, "num_queries": len(query_ids),
            "selection": MetadataValue.json(selection),
            "report_path": MetadataValue.path(str(paths["json"])),
            **_figures_metadata(context, name, split, by_split)})

    return [evaluation_report]


def _figures_metadata(context, dataset: str, report_split: str, by_split: dict) -> dict:
    """Each split's table, logged and as markdown metadata ("report" for the report split,
    "<split>_report" for the others), and every system's nDCG@10 ("<split>/"-prefixed but for
    the report split)."""
    from jrr_pipeline.ml.evaluation import markdown_table

    metadata: dict = {}
    for split, systems in by_split.items():
        table = markdown_table(systems)
        context.log.info(f"evaluation of {dataset} ({split}):\n{table}")
        prefix = "" if split == report_split else f"{split}/"
        metadata["report" if not prefix else f"{split}_report"] = MetadataValue.md(table)
        metadata.update({f"{prefix}{system}/nDCG@10": round(values["nDCG@10"], 4)
                         for system, values in systems.items()})
    return metadata


def _record(context, settings, name, split, systems, curves, per_query_ndcg, extra, artifacts,
            dataset, tracking, selection, dev_systems):
    """The MLflow evaluation run (params, metrics, the report as artifacts) and the report
    files; returns (MLflow run id, report paths)."""
    import mlflow

    from jrr_pipeline.ml.evaluation import write_report

    with tracking.start_run(f"evaluation-{name}", tags={**dagster_tags(context), "dataset": name,
                                                        "split": split}) as run:
        run_id = run.info.run_id
        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes(),
                                   context="evaluation")
        mlflow.log_params({"dataset": name, "split": split, "depth": settings.depth,
                           "rerank_depth": settings.rerank_depth,
                           "rerank_fusion_weight": settings.rerank_fusion_weight,
                           "num_queries": extra["num_queries"],
                           "selection_split": selection["split"] or "none",
                           "selection_origin": selection["origin"] or "none",
                           "selection_queries": selection["queries"],
                           "labels": extra["labels"]})
        for system, values in systems.items():
            mlflow.log_metrics({mlflow_metric_name(system, m): v for m, v in values.items()})
        for system, values in (dev_systems or {}).items():
            mlflow.log_metrics({mlflow_metric_name(system, m, selection["split"]): v
                                for m, v in values.items()})
        paths = write_report(artifacts.report_dir(name), name, split, systems, run_id,
                             extra=extra, per_query=per_query_ndcg, recall_curves=curves,
                             selection=selection, dev_systems=dev_systems)
        mlflow.log_artifacts(str(artifacts.report_dir(name)), artifact_path="report")
    return run_id, paths


def _metric_rows(run_id: str, name: str, by_split: dict[str, dict]) -> pl.DataFrame:
    """Rows of the warehouse's ``metrics`` table (every evaluation appends), one per split,
    system and measure."""
    from datetime import datetime

    rows = [(run_id, name, system, split, measure, float(value))
            for split, systems in by_split.items()
            for system, values in systems.items() for measure, value in values.items()]
    return pl.DataFrame(rows, schema=["run_id", "dataset", "system", "split", "measure", "value"],
                        orient="row").with_columns(
        created_at=pl.lit(datetime.now().replace(microsecond=0)))
