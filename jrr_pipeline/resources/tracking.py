"""MLflow tracking: an embedded sqlite store under JRR_HOME by default, any tracking URI by config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from jrr_pipeline.resources.home import jrr_home


class MLflowTracking(ConfigurableResource):
    """Opens MLflow runs tagged with their Dagster origin."""

    tracking_uri: str = Field(
        default="", description="Empty means MLFLOW_TRACKING_URI, else JRR_MLFLOW_POSTGRES_URL / "
                                "JRR_POSTGRES_URL (schema mlflow), else sqlite:///$JRR_HOME/mlflow.db")
    artifact_root: str = Field(
        default="", description="Artifact root for new experiments; empty means "
                                "$JRR_MLFLOW_ARTIFACTS, else $JRR_HOME/mlruns"
    )
    experiment: str = Field(default="jrr-pipeline", description="MLflow experiment name")

    def resolved_uri(self) -> str:
        from jrr_pipeline.resources.stores import mlflow_tracking_uri

        return self.tracking_uri or mlflow_tracking_uri(jrr_home())

    def _client_setup(self):
        import mlflow

        mlflow.set_tracking_uri(self.resolved_uri())
        if mlflow.get_experiment_by_name(self.experiment) is None:
            from jrr_pipeline.resources.stores import mlflow_artifact_root

            root = self.artifact_root or mlflow_artifact_root(jrr_home()).location
            mlflow.create_experiment(self.experiment, artifact_location=root)
        mlflow.set_experiment(self.experiment)
        return mlflow

    def log_dataset_input(self, name: str, source: str, file_hashes: Mapping[str, str],
                          context: str = "training") -> str:
        """Log the dataset files as an MLflow dataset input of the active run; returns its digest.

        The digest is a hash over the files' sha256 (the same content hashes Dagster's
        ``dataset_files`` observation uses), and each file's hash is a tag of the input.
        """
        import mlflow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        from jrr_pipeline.resources.dataset import files_digest

        digest = files_digest(dict(file_hashes))
        data = MetaDataset(LocalArtifactDatasetSource(source), name=name, digest=digest)
        tags = {f"file:{path}": sha[:16] for path, sha in sorted(file_hashes.items())}
        mlflow.log_input(data, context=context, tags=tags)
        return digest

    def register_model(self, run_id: str, artifact_path: str, name: str,
                       tags: Mapping[str, str]) -> str:
        """Register the run's artifact folder ``artifact_path`` (an HF / sentence-transformers model
        folder, not an MLflow-flavoured model) as a new version of ``name``; returns the version.

        ``mlflow.register_model`` insists on an MLmodel file or a LoggedModel, so this goes through
        the client: the version's source is the folder's artifact URI and its run is ``run_id``.
        """
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._client_setup()
        client = MlflowClient(self.resolved_uri())
        try:
            client.create_registered_model(
                name, description="Trained by jrr-pipeline; each version links its MLflow run.")
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags))
        return str(version.version)

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
