"""Where jrr-pipeline keeps its state: everything lives under ``JRR_HOME`` (default ``./.jrr``)."""

from __future__ import annotations

import os
from pathlib import Path

from jrr_pipeline.ml.io import atomic_write_text

MARKER = "# written by jrr-pipeline; delete this line to keep your own edits\n"
DAGSTER_YAML = MARKER + """\
telemetry:
  enabled: false
storage:
  sqlite:
    base_dir: {base}
# Pools jrr_device (training, encoding, reranking) and jrr_warehouse (DuckDB writers) take one step
# at a time across all runs of this instance; file locks (jrr_pipeline/locks.py) back them up.
concurrency:
  pools:
    default_limit: 1
    granularity: op
"""


def jrr_home() -> Path:
    """The absolute JRR_HOME directory (created on first use)."""
    home = Path(os.environ.get("JRR_HOME", ".jrr")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` if set, else ``$JRR_HOME/dagster``; ensures a dagster.yaml with telemetry off."""
    path = Path(os.environ.get("DAGSTER_HOME") or jrr_home() / "dagster").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    wanted = DAGSTER_YAML.format(base=path / "storage")
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith(MARKER) and current != wanted):
        atomic_write_text(config, wanted)
    return path


def configure_environment() -> None:
    """Environment every entry point sets before importing heavy libraries: offline, quiet, local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ["DAGSTER_HOME"] = str(dagster_home())
