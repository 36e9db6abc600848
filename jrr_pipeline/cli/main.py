"""``jrr``: run the pipeline without the UI and read its reports."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

from jrr_pipeline.ml.settings.base import shown
from jrr_pipeline.ml.settings.generation import LABEL_MODES
from jrr_pipeline.resources.home import configure_environment, jrr_home
from jrr_pipeline.resources.locks import ResourceBusyError
from jrr_pipeline.settings import PRESET_NAMES, user_settings


def main(argv: list[str] | None = None) -> int:
    """The ``jrr`` command; returns the exit status: 0 done, 1 the data, the state or a run
    failed, 2 the command line, the settings or the environment are wrong. Errors are one line
    (``jrr: error: ...``) unless ``--verbose``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="log Dagster's full events and show stack traces of errors")
    parser = argparse.ArgumentParser(prog="jrr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[common])

    run = add_parser("run", help="materialize the asset graph for one dataset (stale stages only)")
    run.add_argument("data_dir", help="dataset directory (BEIR, MS MARCO TSV or CSV/Parquet layout)")
    run.add_argument("--preset", choices=PRESET_NAMES, default="cpu", help="config defaults (default: cpu)")
    run.add_argument("--select", default="*", help="Dagster asset selection, e.g. 'bm25_negatives+'")
    run.add_argument("--stale-only", action="store_true", default=True,
                     help="materialize only stale or missing assets (the default)")
    run.add_argument("--all", dest="stale_only", action="store_false",
                     help="materialize every selected asset, stale or not")
    run.add_argument("--name", default="", help="dataset name (default: the directory's name)")
    run.add_argument("--quiet", action="store_true", help="only print the summary")
    run.add_argument("--dry-run", action="store_true",
                     help="only list what is stale now and what lies downstream of it")
    run.add_argument("--labels", choices=LABEL_MODES, default=None,
                     help="training queries: only = the dataset's train qrels (default), augment "
                          "= plus generated queries, none = generated queries only (the "
                          "generation stage; same as --set generation.labels=...)")
    run.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                     help="override one setting (repeatable), e.g. warmup_reranker.lr=3e-5; "
                          "applied over $JRR_SETTINGS (a TOML file) and the preset")

    show = add_parser("settings", help="print the resolved settings as TOML (what a preset "
                                           "means; the format JRR_SETTINGS reads)")
    show.add_argument("--preset", choices=PRESET_NAMES, default="cpu",
                      help="preset (default: cpu)")
    show.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                      help="override one setting (repeatable), as for `jrr run`")

    doctor = add_parser("doctor", help="which stores (Dagster, MLflow, DuckDB, artifacts), "
                                       "executor and training launch are in use")
    doctor.add_argument("--check", action="store_true",
                        help="also connect to the Dagster and MLflow stores (exit 1 on failure)")

    report = add_parser("report", help="print the latest evaluation table")
    report.add_argument("--dataset", default=None, help="dataset name (default: the latest report)")
    report.add_argument("--json", action="store_true", help="print the raw evaluation.json")
    report.add_argument("--history", action="store_true",
                        help="every stored evaluation of --measure over time, plotted to a PNG")
    report.add_argument("--measure", default="nDCG@10", help="measure for --history")

    lineage = add_parser("lineage", help="registered model -> training run -> inputs -> data files")
    lineage.add_argument("model", help="MODEL_NAME[:VERSION], e.g. jrr-scifact-warmup_retriever:2")
    lineage.add_argument("--tracking-uri", default="",
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")

    gen = add_parser("generated", help="generated queries next to their documents")
    gen.add_argument("--doc", default=None, help="only this document's queries")
    gen.add_argument("--round", type=int, default=None,
                     help="only this game round (-1 = the training queries of the trained generator)")
    gen.add_argument("--limit", type=int, default=20, help="queries shown (default 20)")
    gen.add_argument("--width", type=int, default=100, help="characters of document text shown")

    cands = add_parser("candidates", help="a query's denoised candidate list, to judge by eye")
    cands.add_argument("query_id", help="a train query id (see the candidates table)")
    cands.add_argument("--width", type=int, default=90, help="characters of passage text shown")

    find = add_parser("search", help="answer queries from the latest index (optionally reranked)")
    find.add_argument("queries", nargs="+", help="query texts (models load once for all of them)")
    find.add_argument("--dataset", default=None, help="dataset name (default: the latest report's)")
    find.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    find.add_argument("--rerank", action="store_true", help="rescore the top --depth with the reranker")
    find.add_argument("--depth", type=int, default=20, help="candidates reranked (default 20)")
    find.add_argument("--json", action="store_true", help="print hits and timings as JSON lines")

    ui = add_parser("ui", help="Dagster webserver + daemon on 127.0.0.1 (Ctrl-C stops both)")
    ui.add_argument("data_dir", help="dataset directory the code location materializes")
    ui.add_argument("--preset", choices=PRESET_NAMES, default="cpu", help="config defaults (default: cpu)")
    ui.add_argument("--port", type=int, default=3000, help="port (default 3000)")

    server = add_parser("mlflow", help="MLflow server on 127.0.0.1 over the project's store")
    server.add_argument("--port", type=int, default=5000, help="port (default 5000)")

    args = parser.parse_args(argv)
    try:
        configure_environment()
    except OSError as err:
        return fail(environment_problem(err), 2)
    from jrr_pipeline.dagster_compat import quiet_dagster_previews
    from jrr_pipeline.ml.data.errors import DataFormatError
    from jrr_pipeline.resources.warehouse import WarehouseError

    quiet_dagster_previews()
    commands = {"run": cmd_run, "settings": cmd_settings, "lineage": cmd_lineage,
                "search": cmd_search, "candidates": cmd_candidates, "ui": cmd_ui,
                "mlflow": cmd_mlflow, "report": cmd_report, "doctor": cmd_doctor,
                "generated": cmd_generated}
    try:
        return commands[args.command](args)
    except DataFormatError as err:  # bad data: the run did not start, nothing was written
        return fail(str(err), 1)
    except (WarehouseError, ResourceBusyError) as err:
        return fail(str(err), 1)
    except (FileNotFoundError, ValueError) as err:
        return fail(str(err), 2)
    except Exception as err:
        if args.verbose:
            raise
        first = (str(err).strip().split("\n", 1)[0] or "no message")
        return fail(f"{type(err).__name__}: {shown(first).strip(chr(39))} (jrr {args.command} "
                    f"--verbose shows the stack trace)", 1)


def fail(message: str, status: int) -> int:
    """Print the one error line (the last line of the output) and return the exit status."""
    print(f"jrr: error: {message}", file=sys.stderr)
    return status


def environment_problem(err: OSError) -> str:
    """One line for a JRR_HOME (or DAGSTER_HOME) that cannot be used as a directory."""
    import os

    name = next((n for n in ("JRR_HOME", "DAGSTER_HOME") if os.environ.get(n)
                 and err.filename and str(err.filename).startswith(os.environ[n])), "JRR_HOME")
    why = "exists and is not a directory" if isinstance(err, FileExistsError) else err.strerror
    return (f"{name}={os.environ.get(name, '.jrr')}: {err.filename}: {why}; point {name} at a "
            f"directory jrr may create and write")


def cmd_run(args: argparse.Namespace) -> int:
    from jrr_pipeline.ops.runner import run_pipeline

    data_dir = Path(args.data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such dataset directory")
    started = time.perf_counter()
    labels = [f"generation.labels={args.labels}"] if args.labels else []
    settings = user_settings(labels + args.set, args.preset)
    outcome = run_pipeline(str(data_dir), preset=args.preset, select=args.select,
                           stale_only=args.stale_only, dataset_name=args.name,
                           echo=None if args.quiet else print, settings=settings,
                           dry_run=args.dry_run, verbose=args.verbose)
    for asset, why in outcome.lost.items() if args.quiet else ():  # else said as found
        print(f"{asset}: {why}: rebuilt")
    if args.dry_run:
        print(f"stale or missing: {', '.join(outcome.stale) or 'nothing'}")
        print(f"downstream (re-run when their inputs change): {', '.join(outcome.downstream) or 'nothing'}")
        print(f"fresh: {', '.join(outcome.fresh) or 'nothing'}")
        return 0
    seconds = time.perf_counter() - started
    for report in outcome.check_reports.values():
        if not report.passed:
            print(report.line(), file=sys.stderr if report.blocking else sys.stdout)
    if not outcome.success:
        if outcome.materialized:
            print(f"materialized before the failure: {', '.join(outcome.materialized)}")
        return fail(f"{outcome.failure} (run {outcome.run_id}, failed after {seconds:.1f}s)", 1)
    if not outcome.materialized:
        print(f"nothing stale: {len(outcome.fresh)} assets up to date ({seconds:.1f}s)")
    else:
        print(f"materialized {len(outcome.materialized)} assets in {seconds:.1f}s: "
              f"{', '.join(outcome.materialized)}")
    report = outcome.report_path
    if report and report.exists():
        print(f"report: {report}")
        print(_table(json.loads(report.read_text())))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from jrr_pipeline.settings import resolve_settings, to_toml

    user = user_settings(args.set, args.preset)
    print(to_toml(resolve_settings(args.preset, user), args.preset, user), end="")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from jrr_pipeline.cli.search import Searcher
    from jrr_pipeline.ml.text import passage_text
    from jrr_pipeline.resources import ArtifactStore, Warehouse

    dataset = args.dataset or latest_report(None).parent.name
    started = time.perf_counter()
    searcher = Searcher(ArtifactStore().path(dataset, ""), Warehouse(), rerank=args.rerank,
                        rerank_depth=args.depth)
    load_s = time.perf_counter() - started
    if not args.json:
        print(f"{dataset}: {searcher.stage} models and index loaded in {load_s:.1f}s")
    for query in args.queries:
        hits, timings = searcher.search(query, k=args.k)
        if args.json:
            print(json.dumps({"query": query, "hits": [h.__dict__ for h in hits],
                              "timings_ms": {k: round(v, 2) for k, v in timings.items()}}))
            continue
        parts = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in timings.items())
        print(f"\n{query}  ({parts} ms)")
        for rank, hit in enumerate(hits, start=1):
            text = " ".join(passage_text(hit.title, hit.text).split())
            print(f"{rank:>3}. {hit.score:8.3f}  {hit.doc_id:<12} {text[:100]}")
    return 0


def cmd_generated(args: argparse.Namespace) -> int:
    from jrr_pipeline.ml.text import passage_text
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse()
    if not warehouse.has_table("generated_queries"):
        raise FileNotFoundError(f"{warehouse.file}: no generated_queries table; run with "
                                f"--labels none or --labels augment")
    where, params = [], []
    if args.doc is not None:
        where.append("g.doc_id = ?")
        params.append(args.doc)
    if args.round is not None:
        where.append("g.round = ?")
        params.append(args.round)
    rows = warehouse.query(
        "SELECT g.round, g.query_id, g.text, g.reward, g.doc_id, c.title, c.text FROM "
        "generated_queries g JOIN corpus c USING (doc_id)"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY g.round = -1 DESC, g.round DESC, g.doc_id, g.query_id LIMIT ?", [*params, args.limit])
    if rows.height == 0:
        raise ValueError("no generated query matches"
                         + (f" --doc {args.doc}" if args.doc is not None else "")
                         + (f" --round {args.round}" if args.round is not None else ""))
    for rnd, qid, query, reward, doc_id, title, text in rows.iter_rows():
        passage = " ".join(passage_text(title, text).split())
        if len(passage) > args.width:
            passage = passage[: args.width - 3] + "..."
        score = "" if reward is None else f"  reward {reward:.3f}"
        label = "final" if rnd == -1 else f"round {rnd}"
        print(f"[{label}] {qid}{score}\n  query: {query}\n  doc {doc_id}: {passage}")
    return 0


def cmd_candidates(args: argparse.Namespace) -> int:
    from jrr_pipeline.ml.text import passage_text
    from jrr_pipeline.resources import Warehouse

    warehouse = Warehouse()
    if not warehouse.has_table("candidates"):
        raise FileNotFoundError(f"{warehouse.file}: no candidates table; materialize denoised_candidates")
    rows = warehouse.query(
        "SELECT c.doc_id, c.label, c.source, c.ce_score, co.title, co.text FROM candidates c "
        "JOIN corpus co USING (doc_id) WHERE c.query_id = ? ORDER BY c.label DESC, c.ce_score DESC",
        [args.query_id])
    if rows.height == 0:
        sample = warehouse.query("SELECT DISTINCT query_id FROM candidates ORDER BY query_id LIMIT 5")
        raise ValueError(f"query {args.query_id!r} has no candidate list; e.g. "
                         f"{', '.join(sample['query_id'].to_list())}")
    query = warehouse.query("SELECT text FROM queries WHERE query_id = ?", [args.query_id])
    print(f"query {args.query_id}: {query['text'][0] if query.height else '?'}")
    print(f"{'label':<6} {'ce_score':>8}  {'source':<24} {'doc_id':<12} passage")
    for doc_id, label, source, score, title, text in rows.iter_rows():
        passage = " ".join(passage_text(title, text).split())
        if len(passage) > args.width:
            passage = passage[: args.width - 3] + "..."
        kind = "pos" if label == 1 else "neg"
        print(f"{kind:<6} {score:>8.3f}  {source:<24} {doc_id:<12} {passage}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from jrr_pipeline.cli.servers import serve, ui_command, ui_environment

    if not Path(args.data_dir).expanduser().is_dir():
        raise FileNotFoundError(f"{args.data_dir}: no such dataset directory")
    print(f"Dagster UI on http://127.0.0.1:{args.port} (instance {ui_environment(args.data_dir, args.preset)['DAGSTER_HOME']})")
    return serve(ui_command(args.port), ui_environment(args.data_dir, args.preset))


def cmd_mlflow(args: argparse.Namespace) -> int:
    from jrr_pipeline.cli.servers import mlflow_server_command, serve

    print(f"MLflow on http://127.0.0.1:{args.port}; log to it with "
          f"MLFLOW_TRACKING_URI=http://127.0.0.1:{args.port}")
    return serve(mlflow_server_command(args.port))


def cmd_lineage(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from jrr_pipeline.ops.lineage import model_lineage
    from jrr_pipeline.resources import MLflowTracking

    uri = args.tracking_uri or MLflowTracking().resolved_uri()
    with DagsterInstance.get() as instance:
        tree = model_lineage(args.model, uri, instance)
    print("\n".join(tree.render()))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from jrr_pipeline.ops.doctor import inspect_environment, render, run_checks

    lines = inspect_environment()
    if args.check:
        lines = run_checks(lines)
    print(render(lines))
    return 0 if all(line.ok for line in lines) else 1


def cmd_report(args: argparse.Namespace) -> int:
    if args.history:
        return cmd_history(args)
    path = latest_report(args.dataset)
    data = json.loads(path.read_text())
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{path}\n{_table(data)}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from jrr_pipeline.ops.history import metric_history, plot_history
    from jrr_pipeline.resources import Warehouse

    frame = metric_history(Warehouse(), args.dataset, args.measure)
    if frame.height == 0:
        raise FileNotFoundError(f"no stored {args.measure} evaluations yet; run `jrr run DATA_DIR`")
    with_time = frame.select("created_at", "dataset", "system", "value", "run_id")
    print(with_time)
    out = jrr_home() / "reports" / f"history_{args.measure.replace('@', '_at_')}.png"
    print(f"plot: {plot_history(frame, out, args.measure)}")
    return 0


def latest_report(dataset: str | None) -> Path:
    reports = jrr_home() / "reports"
    if dataset:
        path = reports / dataset / "evaluation.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no report for dataset {dataset!r}")
        return path
    found = sorted(reports.glob("*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{reports}: no evaluation report yet; run `jrr run DATA_DIR` first")
    return found[-1]


def _table(data: dict) -> str:
    from jrr_pipeline.ml.evaluation import markdown_table

    head = f"{data['dataset']} ({data['split']}), MLflow run {data.get('mlflow_run_id')}"
    return f"{head}\n{markdown_table(data['systems'])}"


if __name__ == "__main__":
    raise SystemExit(main())
