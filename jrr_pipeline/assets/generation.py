"""[generation] query_generator (the generator-retriever game) and generated_queries (the table
the training stages read in labels mode augment or none). Absent from the graph in mode only."""

import dataclasses
import time

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from jrr_pipeline.assets.common import (
    DEVICE_POOL,
    dagster_tags,
    input_data_versions,
    log_params,
    manifest,
    registered_model_name,
    stage_config,
    state_dir_for,
)
from jrr_pipeline.ml.settings import Settings
from jrr_pipeline.resources import ArtifactStore, Compute, DatasetSource, MLflowTracking, Warehouse
from jrr_pipeline.settings import code_version

GROUP = "generation"
CORE = ("jrr_pipeline.ml.generation.game", "jrr_pipeline.ml.generation.reward",
        "jrr_pipeline.ml.generation.setup", "jrr_pipeline.ml.generation.spans",
        "jrr_pipeline.ml.generation.span_policy", "jrr_pipeline.ml.generation.seq2seq",
        "jrr_pipeline.ml.generation.fusion_relevance",
        "jrr_pipeline.ml.training.warmup", "jrr_pipeline.ml.losses.contrastive",
        "jrr_pipeline.ml.losses.listwise")
# Settings only the training stages read (their code versions include them): a new value re-runs
# those stages, not the game.
NOT_READ_BY_THE_GAME = ("augment_weight",)
ROUNDS_FILE = "rounds.parquet"
SAMPLES_SHOWN = 20
ROUND_SCHEMA = {"query_id": pl.Utf8, "text": pl.Utf8, "doc_id": pl.Utf8, "round": pl.Int32,
                "retriever_loss": pl.Float64, "relevance": pl.Float64, "penalty": pl.Float64,
                "reward": pl.Float64}


def build_generation_assets(settings: dict[str, Settings]) -> list:
    generation = settings["generation"]
    if generation.labels == "only":
        return []
    GenerationConfig = stage_config(generation)
    game = generation.replace(**{f.name: f.default for f in dataclasses.fields(generation)
                                 if f.name in NOT_READ_BY_THE_GAME})
    version = code_version(game, __name__, *CORE)

    @asset(
        name="query_generator",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["bm25_index", "corpus"] + (["queries", "qrels"] if generation.labels == "augment"
                                         else []),
        code_version=version,
        description="The generator-retriever game: a query generator trained by REINFORCE on "
                    "reward = a * retriever loss + b * relevance (reranker or zero-shot fusion) "
                    "- c * penalty, "
                    "alternating with retriever and reranker training on its queries",
    )
    def query_generator(context: AssetExecutionContext, config: GenerationConfig,
                        warehouse: Warehouse, artifacts: ArtifactStore, dataset: DatasetSource,
                        compute: Compute, mlflow_tracking: MLflowTracking) -> MaterializeResult:
        with compute.claim(f"query_generator ({context.run.run_id[:8]})",
                           on_wait=context.log.warning):
            return _query_generator(context, config.settings(), warehouse, artifacts, dataset,
                                    compute, mlflow_tracking)

    @asset(
        name="generated_queries",
        group_name=GROUP,
        pool=DEVICE_POOL,
        deps=["query_generator", "corpus"],
        code_version=version,
        description="generated_queries table: every game round's queries with their reward "
                    "parts, and the trained generator's training queries (round -1)",
    )
    def generated_queries(context: AssetExecutionContext, config: GenerationConfig,
                          warehouse: Warehouse, artifacts: ArtifactStore, dataset: DatasetSource,
                          compute: Compute) -> MaterializeResult:
        with compute.claim(f"generated_queries ({context.run.run_id[:8]})",
                           on_wait=context.log.warning):
            return _generated_queries(context, config.settings(), warehouse, artifacts, dataset,
                                      compute)

    return [query_generator, generated_queries]


def _query_generator(context, settings, warehouse, artifacts, dataset, compute, tracking):
    import mlflow

    from jrr_pipeline.ml.generation.setup import build_game, labelled_examples, save_generator
    from jrr_pipeline.ml.sparse import BM25Index

    name = dataset.dataset_name
    compute.apply_threads()
    corpus = warehouse.table("corpus")
    bm25 = BM25Index.load(artifacts.path(name, "bm25_index"))
    labelled = (labelled_examples(settings, corpus, warehouse.table("queries"),
                                  warehouse.table("qrels"), bm25)
                if settings.labels == "augment" else None)
    bf16 = compute.use_bf16() if settings.bf16 == "auto" else settings.bf16 == "on"
    if settings.relevance == "fusion":
        context.log.info(f"query_generator: encoding {corpus.height} documents once for the "
                         f"fusion relevance S(q, d)")
    game = build_game(settings, corpus, bm25, compute.torch_device(), bf16, labelled,
                      progress=True)
    state = state_dir_for(artifacts.path(name, ""), "query_generator",
                          {"settings": settings.to_dict(), "inputs": input_data_versions(context)})
    tags = {**dagster_tags(context), "dataset": name}
    started = time.perf_counter()
    context.log.info(f"query_generator: {settings.rounds} rounds of {settings.documents_per_round}"
                     f" documents x {settings.queries_per_document} queries ({settings.generator} "
                     f"generator, labels {settings.labels}"
                     f"{f', {len(labelled)} labelled pairs' if labelled else ''})")

    with tracking.start_run(f"query_generator-{name}", tags=tags) as run:
        tracking.log_dataset_input(name, str(dataset.directory), dataset.content_hashes())
        log_params(settings.to_dict())

        def on_round(result) -> None:
            done = result.round + 1
            elapsed = time.perf_counter() - started
            eta = elapsed / max(done - game.first_round, 1) * (settings.rounds - done)
            mlflow.log_metrics(result.metrics, step=result.round)
            mlflow.log_text(_samples_markdown(result.rows, SAMPLES_SHOWN),
                            f"samples/round_{result.round:03d}.md")
            m = result.metrics
            context.log.info(
                f"round {done}/{settings.rounds}: reward {m['reward']:.3f} (retriever loss "
                f"{m['reward_retriever_loss']:.3f}, relevance {m['reward_relevance']:.3f}, "
                f"penalty {m['reward_penalty']:.3f}), distinct-2 {m['distinct_2']:.2f}, "
                f"{m['seconds']:.0f}s, ETA {eta:.0f}s")

        results = game.play(state, on_round=on_round)
        output = artifacts.path(name, "query_generator")
        rows = [row for result in results for row in result.rows]
        with artifacts.staging(name, "query_generator") as tmp:
            save_generator(game.generator, settings, tmp / "generator")
            pl.DataFrame(rows, schema=ROUND_SCHEMA, orient="row").write_parquet(tmp / ROUNDS_FILE)
        mlflow.log_artifacts(str(output / "generator"), artifact_path="generator")
        run_id = run.info.run_id
    model_name = registered_model_name(name, "query_generator")
    version = tracking.register_model(run_id, "generator", model_name,
                                      {**tags, "mlflow.run_id": run_id})
    rewards = [r.metrics["reward"] for r in results]
    context.log.info(f"registered {model_name} version {version}; reward by round "
                     f"{', '.join(f'{x:.3f}' for x in rewards)}")
    return MaterializeResult(metadata={
        "path": MetadataValue.path(str(output)), "mlflow_run_id": run_id,
        "registered_model": f"{model_name}:{version}", "rounds": len(results),
        "first_reward": round(rewards[0], 4), "last_reward": round(rewards[-1], 4),
        "reward_by_round": MetadataValue.json([round(x, 4) for x in rewards]),
        "seconds": round(time.perf_counter() - started, 1), **manifest(output)})


def _samples_markdown(rows: list[dict], n: int) -> str:
    lines = ["| query | document | reward | retriever loss | relevance |", "|---|---|---:|---:|---:|"]
    for row in rows[:n]:
        lines.append(f"| {row['text'].replace('|', '/')} | {row['doc_id']} | "
                     f"{_num(row['reward'])} | {_num(row['retriever_loss'])} | "
                     f"{_num(row['relevance'])} |")
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _generated_queries(context, settings, warehouse, artifacts, dataset, compute):
    from jrr_pipeline.ml.generation.game import write_queries
    from jrr_pipeline.ml.generation.setup import final_documents, load_generator
    from jrr_pipeline.ml.generation.spans import diversity, longest_copy
    from jrr_pipeline.ml.text import passage_texts

    name = dataset.dataset_name
    compute.apply_threads()
    source = artifacts.path(name, "query_generator")
    generator = load_generator(source / "generator").to(compute.torch_device())
    corpus = warehouse.table("corpus")
    text_of = dict(zip(corpus["doc_id"].cast(pl.Utf8).to_list(), passage_texts(corpus),
                       strict=True))
    docs = final_documents(settings, list(text_of))
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        context.log.info(f"generated queries for {done}/{total} documents "
                         f"({elapsed:.0f}s, ETA {elapsed / done * (total - done):.0f}s)")

    final = write_queries(generator, docs, [text_of[d] for d in docs],
                          settings.final_queries_per_document, settings.seed, batch=256,
                          progress=progress)
    rounds = pl.read_parquet(source / ROUNDS_FILE)
    version = context.assets_def.code_versions_by_key[context.asset_key]
    table = pl.concat([rounds, pl.DataFrame(final, schema=ROUND_SCHEMA, orient="row")]).with_columns(
        generator_version=pl.lit(version))
    warehouse.replace_tables({"generated_queries": table})
    texts = [row["text"] for row in final]
    stats = diversity(texts)
    copies = [longest_copy(row["text"], text_of[row["doc_id"]]) for row in final]
    context.log.info(f"generated_queries: {len(final)} training queries for {len(docs)} "
                     f"documents in {time.perf_counter() - started:.0f}s; distinct-1 "
                     f"{stats['distinct_1']:.2f}, distinct-2 {stats['distinct_2']:.2f}, "
                     f"duplicates {stats['duplicate_rate']:.3f}")
    return MaterializeResult(metadata={
        "dagster/row_count": table.height, "training_queries": len(final),
        "documents": len(docs), "game_rows": rounds.height,
        **{k: round(v, 4) for k, v in stats.items()},
        "mean_copy_words": round(sum(copies) / max(len(copies), 1), 2),
        "samples": MetadataValue.md(_samples_markdown(
            [{**row, "reward": None, "retriever_loss": None, "relevance": None}
             for row in final], SAMPLES_SHOWN))})


def generation_checks(settings: dict[str, Settings]) -> list:
    """Checks of the generated_queries table (none in labels mode only)."""
    generation = settings["generation"]
    if generation.labels == "only":
        return []

    def final_rows(warehouse: Warehouse) -> pl.DataFrame:
        return warehouse.query("SELECT query_id, text, doc_id FROM generated_queries "
                               "WHERE round = -1")

    def result(failures: list, total: int, what: str, **extra) -> AssetCheckResult:
        return AssetCheckResult(passed=not failures, severity=AssetCheckSeverity.ERROR,
                                metadata={"count": len(failures), "total": total, "what": what,
                                          "examples": MetadataValue.json(failures[:10]), **extra})

    @asset_check(asset="generated_queries", blocking=True, description="no empty query")
    def generated_queries_not_empty(warehouse: Warehouse) -> AssetCheckResult:
        rows = warehouse.query("SELECT query_id, text FROM generated_queries")
        empty = [q for q, t in rows.iter_rows() if not (t or "").strip()]
        return result(empty, rows.height, "empty queries")

    @asset_check(asset="generated_queries", blocking=True, additional_deps=["corpus"],
                 description="no training query copies more than max_copy_words words of its "
                             "document (unless allow_copies)")
    def generated_queries_no_long_copies(warehouse: Warehouse) -> AssetCheckResult:
        from jrr_pipeline.ml.generation.spans import longest_copy
        from jrr_pipeline.ml.text import passage_texts

        corpus = warehouse.table("corpus")
        text_of = dict(zip(corpus["doc_id"].to_list(), passage_texts(corpus), strict=True))
        rows = final_rows(warehouse)
        long = [q for q, t, d in rows.iter_rows()
                if longest_copy(t, text_of.get(d, "")) > generation.max_copy_words]
        return result([] if generation.allow_copies else long, rows.height,
                      f"queries copying > {generation.max_copy_words} words", copies=len(long))

    @asset_check(asset="generated_queries", blocking=True,
                 description="the share of repeated training queries is at most "
                             "max_duplicate_rate")
    def generated_queries_few_duplicates(warehouse: Warehouse) -> AssetCheckResult:
        from jrr_pipeline.ml.generation.spans import diversity

        rows = final_rows(warehouse)
        rate = diversity(rows["text"].to_list())["duplicate_rate"]
        failed = [f"duplicate rate {rate:.3f}"] if rate > generation.max_duplicate_rate else []
        return result(failed, rows.height, "duplicate rate above the bound",
                      duplicate_rate=round(rate, 4))

    @asset_check(asset="generated_queries", blocking=True, additional_deps=["corpus"],
                 description="every sampled document has at least one training query")
    def generated_queries_cover_documents(warehouse: Warehouse) -> AssetCheckResult:
        from jrr_pipeline.ml.generation.setup import final_documents

        doc_ids = warehouse.table("corpus")["doc_id"].to_list()
        expected = final_documents(generation, doc_ids)
        covered = set(final_rows(warehouse).filter(pl.col("text").str.strip_chars() != "")[
            "doc_id"].to_list())
        return result([d for d in expected if d not in covered], len(expected),
                      "sampled documents without a query")

    return [generated_queries_not_empty, generated_queries_no_long_copies,
            generated_queries_few_duplicates, generated_queries_cover_documents]
