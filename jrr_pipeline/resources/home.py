"""Where jrr-pipeline keeps its state: everything lives under ``JRR_HOME`` (default ``./.jrr``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from jrr_pipeline.ml.io import atomic_write_text
from jrr_pipeline.resources.stores import dagster_store

MARKER = "# written by jrr-pipeline; delete this line to keep your own edits\n"
SQLITE_STORAGE = """\
storage:
  sqlite:
    base_dir: {base}
"""
# The URL is written out (so a webserver, daemon or run worker started without jrr loads the same
# instance); a dagster.yaml holding a password is readable by its owner only.
POSTGRES_STORAGE = """\
storage:
  postgres:
    postgres_url: {url}
"""
DAGSTER_YAML = MARKER + """\
telemetry:
  enabled: false
{storage}\
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
    """``$DAGSTER_HOME`` if set, else ``$JRR_HOME/dagster``; ensures a dagster.yaml with telemetry
    off, its storage SQLite under that folder or PostgreSQL (``JRR_DAGSTER_POSTGRES_URL``, else
    ``JRR_POSTGRES_URL``; see resources/stores.py)."""
    path = Path(os.environ.get("DAGSTER_HOME") or jrr_home() / "dagster").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    store = dagster_store(path)
    storage = POSTGRES_STORAGE.format(url=json.dumps(store.location)) \
        if store.kind == "postgresql" else SQLITE_STORAGE.format(base=path / "storage")
    wanted = DAGSTER_YAML.format(storage=storage)
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith(MARKER) and current != wanted):
        atomic_write_text(config, wanted)
        if store.shown != store.location:  # holds a password
            config.chmod(0o600)
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
