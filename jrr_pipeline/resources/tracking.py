"""MLflow tracking: an embedded sqlite store under JRR_HOME by default, any tracking URI by config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from jrr_pipeline.paths import jrr_home


class MLflowTracking(ConfigurableResource):
    """Opens MLflow runs tagged with their Dagster origin."""

    tracking_uri: str = Field(default="", description="Empty means sqlite:///$JRR_HOME/mlflow.db")
    artifact_root: str = Field(
        default="", description="Artifact root for new experiments; empty means $JRR_HOME/mlruns"
    )
    experiment: str = Field(default="jrr-pipeline", description="MLflow experiment name")

    def resolved_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{jrr_home() / 'mlflow.db'}"

    def _client_setup(self):
        import mlflow

        mlflow.set_tracking_uri(self.resolved_uri())
        if mlflow.get_experiment_by_name(self.experiment) is None:
            root = self.artifact_root or (jrr_home() / "mlruns").as_uri()
            mlflow.create_experiment(self.experiment, artifact_location=root)
        mlflow.set_experiment(self.experiment)
        return mlflow

    @contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, str] | None = None, nested: bool = False
    ) -> Iterator[Any]:
        """An MLflow run (yielded as the ``mlflow.ActiveRun``); ended FAILED if the body raises."""
        mlflow = self._client_setup()
        run = mlflow.start_run(run_name=run_name, tags=dict(tags or {}), nested=nested)
        try:
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")
