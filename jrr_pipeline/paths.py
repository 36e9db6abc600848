"""Where jrr-pipeline keeps its state: everything lives under ``JRR_HOME`` (default ``./.jrr``)."""

from __future__ import annotations

import os
from pathlib import Path

DAGSTER_YAML = """\
telemetry:
  enabled: false
storage:
  sqlite:
    base_dir: {base}
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
    if not config.exists():
        tmp = config.with_suffix(".yaml.tmp")
        tmp.write_text(DAGSTER_YAML.format(base=path / "storage"))
        os.replace(tmp, config)
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
