"""Which stores a setting selects (no server needed): embedded by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jrr_pipeline.executors import executor_def, executor_name
from jrr_pipeline.resources.home import dagster_home
from jrr_pipeline.resources.stores import (
    dagster_store,
    mask_password,
    mlflow_artifact_root,
    mlflow_store,
)
from jrr_pipeline.resources.tracking import MLflowTracking

URL = "postgresql://team:s3cret@db.example:5433/jrr"
ENV = ("JRR_POSTGRES_URL", "JRR_DAGSTER_POSTGRES_URL", "JRR_MLFLOW_POSTGRES_URL",
       "JRR_MLFLOW_ARTIFACTS", "MLFLOW_TRACKING_URI", "JRR_EXECUTOR", "JRR_MAX_CONCURRENT")


@pytest.fixture
def clean(jrr_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return jrr_env


def test_embedded_stores_by_default(clean: Path):
    home = dagster_home()
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["storage"] == {"sqlite": {"base_dir": str(home / "storage")}}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert MLflowTracking().resolved_uri() == f"sqlite:///{clean / 'mlflow.db'}"
    assert mlflow_artifact_root(clean).location == (clean / "mlruns").as_uri()


def test_one_url_moves_dagster_and_mlflow(clean: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JRR_POSTGRES_URL", URL)
    home = dagster_home()
    config_file = home / "dagster.yaml"
    config = yaml.safe_load(config_file.read_text())
    # psycopg2 named: dagster-postgres fails under psycopg 3, SQLAlchemy 2.1's default driver
    driver = "postgresql+psycopg2://team:s3cret@db.example:5433/jrr"
    assert config["storage"] == {"postgres": {"postgres_url": driver}}
    assert config_file.stat().st_mode & 0o077 == 0  # it holds the password
    mlflow = mlflow_store(clean)
    assert mlflow.location == driver + "?options=-csearch_path%3Dmlflow"  # not Dagster's `runs`
    assert mlflow.source == "JRR_POSTGRES_URL" and "s3cret" not in mlflow.shown
    assert dagster_store(home).shown == "postgresql+psycopg2://team:***@db.example:5433/jrr"
    # the same variable unset again: back to the embedded instance
    monkeypatch.delenv("JRR_POSTGRES_URL")
    dagster_home()
    assert "sqlite" in yaml.safe_load(config_file.read_text())["storage"]


def test_separate_urls_override_and_tracking_uri_wins(clean: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JRR_POSTGRES_URL", URL)
    monkeypatch.setenv("JRR_DAGSTER_POSTGRES_URL", "postgresql://d@dhost/dagster")
    monkeypatch.setenv("JRR_MLFLOW_POSTGRES_URL", "postgres://m@mhost/mlflow")
    assert dagster_store(clean).location == "postgresql+psycopg2://d@dhost/dagster"
    assert mlflow_store(clean).location == "postgresql+psycopg2://m@mhost/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert mlflow_store(clean).kind == "server"
    assert MLflowTracking().resolved_uri() == "http://mlflow.example:5000"
    monkeypatch.setenv("JRR_MLFLOW_ARTIFACTS", "s3://bucket/jrr")
    assert mlflow_artifact_root(clean).location == "s3://bucket/jrr"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql://u@h", "postgresql:///db"])
def test_bad_url_names_the_setting(clean: Path, monkeypatch: pytest.MonkeyPatch, url: str):
    monkeypatch.setenv("JRR_POSTGRES_URL", url)
    with pytest.raises(ValueError, match="JRR_POSTGRES_URL=.*expected postgresql://"):
        dagster_home()


def test_mask_password():
    assert mask_password(URL) == "postgresql://team:***@db.example:5433/jrr"
    assert mask_password("postgresql://team@h/db") == "postgresql://team@h/db"


def test_executor_setting(clean: Path, monkeypatch: pytest.MonkeyPatch):
    assert executor_name() == "in_process" and executor_def().name == "in_process"
    monkeypatch.setenv("JRR_EXECUTOR", "multiprocess")
    monkeypatch.setenv("JRR_MAX_CONCURRENT", "3")
    executor = executor_def()
    assert executor.name == "jrr_multiprocess"
    monkeypatch.setenv("JRR_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="JRR_EXECUTOR='celery': expected one of in_process, "
                                         "multiprocess"):
        executor_name()


def test_doctor_prints_the_embedded_stores(clean: Path, capsys: pytest.CaptureFixture):
    from jrr_pipeline.cli.main import main

    assert main(["doctor", "--check"]) == 0
    lines = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"sqlite      {clean / 'dagster' / 'storage'}  [default]  ok: 0 runs" \
        in lines["dagster storage"]
    assert f"sqlite:///{clean / 'mlflow.db'}" in lines["mlflow backend"]
    assert "ok: 0 runs, 0 registered models" in lines["mlflow backend"]
    assert "in_process" in lines["executor"] and "in process" in lines["training"]


def test_doctor_fails_when_a_store_does_not_answer(clean: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture):
    from jrr_pipeline.cli.main import main
    from tests.integration.browser import free_port

    monkeypatch.setenv("JRR_POSTGRES_URL", f"postgresql://nobody:pw@127.0.0.1:{free_port()}/x")
    assert main(["doctor", "--check"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "pw@" not in out
