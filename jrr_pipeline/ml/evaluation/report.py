"""Evaluation report: evaluation.json, evaluation.md and PNG plots, each written atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jrr_pipeline.ml.evaluation import plots
from jrr_pipeline.ml.evaluation.metrics import DEFAULT_MEASURES
from jrr_pipeline.ml.io import atomic_write_bytes, atomic_write_json, atomic_write_text

JSON_NAME = "evaluation.json"
MARKDOWN_NAME = "evaluation.md"
BASE_KEYS = ("dataset", "split", "systems", "mlflow_run_id")
SELECTION_KEYS = ("selection", "dev_systems")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown_table(
    systems: Mapping[str, Mapping[str, float]], measures: Sequence[str] = DEFAULT_MEASURES
) -> str:
    """A markdown table, one row per system and one column per measure (4 decimals).

    With several systems the best value of each column is bold; a missing value shows as "–".
    """
    header = "| system | " + " | ".join(measures) + " |"
    rule = "|---|" + "---:|" * len(measures)
    best = {m: max((s[m] for s in systems.values() if m in s), default=None) for m in measures}
    rows = []
    for name, values in systems.items():
        cells = []
        for m in measures:
            cell = _fmt(values.get(m))
            if len(systems) > 1 and m in values and values[m] == best[m]:
                cell = f"**{cell}**"
            cells.append(cell)
        rows.append(f"| {name.replace('|', '/')} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def _clean_systems(systems: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, values in systems.items():
        out[str(name)] = {}
        for measure, value in values.items():
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"write_report: system {name!r} measure {measure!r} is {v}")
            out[str(name)][str(measure)] = v
    return out


def _ordered_measures(systems: Mapping[str, Mapping[str, float]]) -> list[str]:
    measures = list(dict.fromkeys(m for v in systems.values() for m in v))
    return [m for m in DEFAULT_MEASURES if m in measures] + [
        m for m in measures if m not in DEFAULT_MEASURES
    ]


def _selection_lines(split: str, selection: Mapping[str, Any] | None,
                     dev_systems: dict[str, dict[str, float]] | None) -> list[str]:
    """The markdown section on model selection and the dev figures."""
    if selection is None:
        return []
    lines = ["## Model selection", ""]
    if selection.get("split"):
        lines.append(f"Everything chosen from scores (rerank depth, fusion weight) is chosen on "
                     f"`{selection['split']}` ({selection.get('origin')}, "
                     f"{selection.get('queries')} queries); `{split}` is read only by this report.")
    if selection.get("note"):
        lines.append(f"{'' if selection.get('split') else 'No selection split: '}"
                     f"{selection['note']}.")
    lines.append("")
    if dev_systems:
        lines += [f"### {selection.get('split')} figures", "",
                  markdown_table(dev_systems, _ordered_measures(dev_systems)), ""]
    return lines


def _markdown(
    dataset: str,
    split: str,
    systems: dict[str, dict[str, float]],
    mlflow_run_id: str | None,
    extra: Mapping[str, Any],
    plot_files: list[Path],
    selection: Mapping[str, Any] | None = None,
    dev_systems: dict[str, dict[str, float]] | None = None,
) -> str:
    lines = [
        f"# Evaluation: {dataset}",
        "",
        f"- split: `{split}`",
        f"- MLflow run: `{mlflow_run_id}`" if mlflow_run_id else "- MLflow run: none",
    ]
    lines += [
        f"- {key}: {value}"
        for key, value in extra.items()
        if isinstance(value, str | int | float | bool)
    ]
    if dev_systems:
        lines += ["", f"### {split} figures"]
    lines += ["", markdown_table(systems, _ordered_measures(systems)), ""]
    lines += _selection_lines(split, selection, dev_systems)
    counts = extra.get("win_loss")
    if counts:
        lines += [f"Per-query {extra.get('win_loss_measure', 'nDCG@10')} against "
                  f"`{extra.get('win_loss_baseline')}` ({split}):", "",
                  "| system | wins | losses | ties |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {c['wins']} | {c['losses']} | {c['ties']} |" for name, c in counts.items()]
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plot_files]
    return "\n".join(lines) + "\n"


def win_loss(per_query: Mapping[str, Mapping[str, float]], baseline: str,
             tolerance: float = 1e-9) -> dict[str, dict[str, int]]:
    """{system: {"wins", "losses", "ties"}}: queries where ``system`` scores above / below / equal
    to ``baseline`` (per-query values of one measure; a query missing from a system counts 0)."""
    if baseline not in per_query:
        raise ValueError(f"win_loss: no per-query values for the baseline {baseline!r}")
    base = per_query[baseline]
    out = {}
    for name, values in per_query.items():
        if name == baseline:
            continue
        diffs = [values.get(q, 0.0) - b for q, b in base.items()]
        out[name] = {"wins": sum(d > tolerance for d in diffs),
                     "losses": sum(d < -tolerance for d in diffs),
                     "ties": sum(abs(d) <= tolerance for d in diffs)}
    return out


def write_report(
    out_dir: Path,
    dataset: str,
    split: str,
    systems: dict[str, dict[str, float]],
    mlflow_run_id: str | None,
    extra: dict | None = None,
    per_query: dict[str, dict[str, float]] | None = None,
    recall_curves: dict[str, dict[int, float]] | None = None,
    per_query_measure: str = "nDCG@10",
    win_loss_baseline: str | None = "warmup_retriever",
    selection: Mapping[str, Any] | None = None,
    dev_systems: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Write the report files into `out_dir` and return their paths.

    evaluation.json holds exactly {"dataset", "split", "systems", "mlflow_run_id"} plus the keys
    of `extra` (which must be JSON-serialisable and must not reuse those names, "selection" or
    "dev_systems"). `selection` (``metrics.selection_info``) adds "selection" and a markdown
    section; `dev_systems` (same shape as `systems`, measured on the selection split) adds
    "dev_systems" and a second table.
    `per_query` ({system: {query_id: value of per_query_measure}}) adds per_query.json and a
    plot and, when `win_loss_baseline` is one of its systems, per-query win / loss / tie counts of
    every other system against it (JSON "win_loss" and a markdown table);
    `recall_curves` ({system: {k: R@k}}) adds recall_curve.png.
    Returns {"json": Path, "markdown": Path, "plots": [Path, ...]} (+ "per_query": Path).
    """
    if not systems:
        raise ValueError("write_report: no systems to report")
    extra = dict(extra or {})
    if dev_systems and not (selection and selection.get("split")):
        raise ValueError("write_report: dev_systems given without a selection split")
    clash = sorted(set(extra) & {*BASE_KEYS, *SELECTION_KEYS})
    if clash:
        raise ValueError(f"write_report: extra keys {clash} clash with the report's own keys")
    if per_query and win_loss_baseline in per_query and len(per_query) > 1:
        extra.update(win_loss=win_loss(per_query, win_loss_baseline),
                     win_loss_baseline=win_loss_baseline, win_loss_measure=per_query_measure)
    out_dir = Path(out_dir)
    clean = _clean_systems(systems)
    clean_dev = _clean_systems(dev_systems) if dev_systems else None
    measures = list(dict.fromkeys(m for v in clean.values() for m in v))
    outputs: dict[str, Any] = {"plots": []}

    bar = out_dir / "measures_bar.png"
    atomic_write_bytes(bar, plots.measures_bar(clean, measures))
    outputs["plots"].append(bar)
    if recall_curves:
        curve = out_dir / "recall_curve.png"
        atomic_write_bytes(curve, plots.recall_curve(recall_curves))
        outputs["plots"].append(curve)
    if per_query:
        pq_png = out_dir / "per_query.png"
        atomic_write_bytes(pq_png, plots.per_query_sorted(per_query, per_query_measure))
        outputs["plots"].append(pq_png)
        pq_json = out_dir / "per_query.json"
        payload = {"measure": per_query_measure, "systems": per_query}
        atomic_write_json(pq_json, payload, indent=1)
        outputs["per_query"] = pq_json

    md = out_dir / MARKDOWN_NAME
    text = _markdown(dataset, split, clean, mlflow_run_id, extra, outputs["plots"], selection,
                     clean_dev)
    atomic_write_text(md, text)
    outputs["markdown"] = md

    report: dict[str, Any] = {"dataset": dataset, "split": split}
    if selection is not None:
        report["selection"] = dict(selection)
    report["systems"] = clean
    if clean_dev:
        report["dev_systems"] = clean_dev
    report.update(mlflow_run_id=mlflow_run_id, **extra)
    js = out_dir / JSON_NAME
    atomic_write_json(js, report, sort_keys=False, ensure_ascii=False, newline=True)
    outputs["json"] = js
    return outputs


def read_report(path: str | Path) -> dict:
    """Read evaluation.json (or the directory holding it); clear error if missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation report not found")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a JSON object")
    missing = [k for k in BASE_KEYS if k not in report]
    if missing:
        raise ValueError(f"{path}: field '{missing[0]}': missing")
    if not isinstance(report["systems"], dict) or not all(
        isinstance(v, dict) for v in report["systems"].values()
    ):
        raise ValueError(f"{path}: field 'systems': expected {{system: {{measure: value}}}}")
    dev = report.get("dev_systems", {})
    if not isinstance(dev, dict) or not all(isinstance(v, dict) for v in dev.values()):
        raise ValueError(f"{path}: field 'dev_systems': expected {{system: {{measure: value}}}}")
    return report
