"""One entry point for every training stage, run in this process or under torchrun.

    python -m jrr_pipeline.ml.training.launch --config run.json

A run file is what a training asset hands to its trainer (relative paths resolve against the
file's folder)::

    {
      "stage": "warmup_retriever" | "warmup_reranker" | "joint_models",
      "settings": {...},                 # the stage's settings (jrr_pipeline.ml.settings), all knobs
      "data": {"queries": "queries.parquet", "corpus": ..., "qrels": ...,
               "negatives": ... (warm-up) | "candidates": ... (joint)},
      "models": {"retriever": "dir", "reranker": "dir"},   # joint: the checkpoints to start from
      "eval_split": "dev",               # joint/AR2: the split a refresh is evaluated on (or null)
      "output_dir": "out", "state_dir": "state",
      "metrics_file": "metrics.jsonl", "result_file": "result.json", "progress": true
    }

Rank 0 appends one JSON line per logged step to ``metrics_file`` ({"iteration", "phase", "step",
"metrics"}) and writes the result to ``result_file``. ``launch`` runs a file in this process
(``nproc`` 1) or under ``torchrun --nproc_per_node=nproc`` and returns the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from jrr_pipeline.ml.settings import STAGES, Settings

TABLES = {"warmup_retriever": ("queries", "corpus", "qrels", "negatives"),
          "warmup_reranker": ("queries", "corpus", "qrels", "negatives"),
          "joint_models": ("queries", "corpus", "qrels", "candidates")}
_KEYS = {"stage", "settings", "data", "models", "eval_split", "output_dir", "state_dir",
         "metrics_file", "result_file", "progress"}


@dataclass
class RunSpec:
    """A parsed, validated run file."""

    stage: str
    settings: Any
    data: dict[str, Path]
    output_dir: Path
    state_dir: Path
    metrics_file: Path | None = None
    result_file: Path | None = None
    progress: bool = True
    models: dict[str, str] = field(default_factory=dict)
    eval_split: str | None = None
    source: Path | None = None

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: _read_table(path, self.source, f"data.{name}")
                for name, path in self.data.items()}

    def log_writer(self) -> Callable[[dict], None]:
        """Appends a record to ``metrics_file`` on rank 0 (a no-op without a file)."""
        from jrr_pipeline.ml.training.distributed import is_main_process

        def write(record: dict) -> None:
            if self.metrics_file is not None and is_main_process():
                self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.metrics_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
        return write


def write_run_file(work_dir: Path, stage: str, settings: Settings, tables: dict[str, pl.DataFrame],
                   output_dir: Path, state_dir: Path, models: dict[str, str] | None = None,
                   eval_split: str | None = None, progress: bool = True) -> Path:
    """Write the tables as Parquet and the run file into ``work_dir``; returns the file."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data = {}
    for name, frame in tables.items():
        frame.write_parquet(work_dir / f"{name}.parquet")
        data[name] = f"{name}.parquet"
    for name in ("metrics.jsonl", "result.json"):
        (work_dir / name).unlink(missing_ok=True)
    spec = {"stage": stage, "settings": settings.to_dict(), "data": data,
            "models": dict(models or {}), "eval_split": eval_split,
            "output_dir": str(output_dir), "state_dir": str(state_dir),
            "metrics_file": "metrics.jsonl", "result_file": "result.json", "progress": progress}
    path = work_dir / "run.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def read_run_file(path: Path) -> RunSpec:
    """Parse and validate a run file; every error names the file and the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: run file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"{path}: field '{unknown[0]}': unknown key")
    stage = raw.get("stage")
    if stage not in TABLES:
        raise ValueError(f"{path}: field 'stage': expected one of {', '.join(TABLES)}, "
                         f"got {stage!r}")
    settings = STAGES[stage].from_dict(raw.get("settings", {}), f"{path}: field 'settings'")
    data = raw.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: field 'data': expected an object")
    for table in TABLES[stage]:
        if table not in data:
            raise ValueError(f"{path}: field 'data.{table}': missing")
    for key in ("output_dir", "state_dir"):
        if key not in raw:
            raise ValueError(f"{path}: field '{key}': missing")
    models = raw.get("models") or {}
    if stage == "joint_models":
        for name in ("retriever", "reranker"):
            if not isinstance(models.get(name), str):
                raise ValueError(f"{path}: field 'models.{name}': missing")

    def resolve(key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{path}: field '{key}': expected a path string, got {value!r}")
        p = Path(value)
        return p if p.is_absolute() else path.parent / p

    def optional(key: str) -> Path | None:
        return resolve(key, raw[key]) if raw.get(key) else None

    return RunSpec(
        stage=stage, settings=settings,
        data={t: resolve(f"data.{t}", data[t]) for t in TABLES[stage]},
        output_dir=resolve("output_dir", raw["output_dir"]),
        state_dir=resolve("state_dir", raw["state_dir"]),
        metrics_file=optional("metrics_file"), result_file=optional("result_file"),
        progress=bool(raw.get("progress", True)),
        models={k: str(resolve(f"models.{k}", v)) for k, v in models.items()},
        eval_split=raw.get("eval_split"), source=path)


def _read_table(path: Path, source: Path | None, name: str) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{source}: field '{name}': file not found: {path}")
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars raises several error types for bad files
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err


def run(path: Path) -> dict[str, Any]:
    """Train as the run file says; returns the result (also written to ``result_file``)."""
    from jrr_pipeline.ml.io import atomic_write_json
    from jrr_pipeline.ml.training.distributed import is_main_process

    spec = read_run_file(path)
    if spec.stage == "joint_models" and spec.settings.method == "ar2":
        from jrr_pipeline.ml.training.ar2 import run_ar2 as train_stage
    elif spec.stage == "joint_models":
        from jrr_pipeline.ml.training.rocketqav2 import run_rocketqav2 as train_stage
    else:
        from jrr_pipeline.ml.training.warmup import run_warmup as train_stage
    result = train_stage(spec)
    if spec.result_file is not None and is_main_process():
        atomic_write_json(spec.result_file, json.loads(json.dumps(result, default=str)))
    return result


def launch(path: Path, nproc: int = 1, rendezvous: Any = None) -> dict[str, Any]:
    """Run ``path`` here (``nproc`` 1 on one node) or under torchrun with ``nproc`` processes
    (on each of ``rendezvous.nnodes`` nodes: a ``distributed.Rendezvous``; this is node 0)."""
    if nproc <= 1 and (rendezvous is None or rendezvous.standalone):
        return run(path)
    from jrr_pipeline.ml.training.distributed import launch_torchrun

    spec = read_run_file(path)
    proc = launch_torchrun(nproc, "jrr_pipeline.ml.training.launch", ["--config", str(path)],
                           rendezvous=rendezvous)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun {spec.stage} training failed with exit code "
                           f"{proc.returncode} (run file {path})")
    if spec.result_file is None or not spec.result_file.exists():
        raise RuntimeError(f"torchrun {spec.stage} training wrote no result ({path})")
    return json.loads(spec.result_file.read_text(encoding="utf-8"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records a run appended to its metrics file ([] when there is none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jrr_pipeline.ml.training.launch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON run file")
    args = parser.parse_args(argv)
    try:
        run(args.config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
