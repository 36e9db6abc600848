"""Artifact tree: the latest good checkpoint, index or report of each asset, swapped in atomically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from jrr_pipeline.ml.io import atomic_directory
from jrr_pipeline.resources.home import jrr_home


class ArtifactStore(ConfigurableResource):
    """``artifacts/<dataset>/<asset>/`` and ``reports/<dataset>/`` under a root (default JRR_HOME)."""

    root: str = Field(default="", description="Root directory; empty means $JRR_HOME")

    @property
    def base(self) -> Path:
        return Path(self.root).expanduser().resolve() if self.root else jrr_home()

    def path(self, dataset: str, asset: str) -> Path:
        return self.base / "artifacts" / dataset / asset

    def report_dir(self, dataset: str) -> Path:
        return self.base / "reports" / dataset

    @contextmanager
    def staging(self, dataset: str, asset: str) -> Iterator[Path]:
        """Yield an empty temporary directory; on success it replaces ``path(dataset, asset)``.

        On an exception the temporary directory is removed and the previous artifact is untouched.
        """
        with atomic_directory(self.path(dataset, asset)) as tmp:
            yield tmp
