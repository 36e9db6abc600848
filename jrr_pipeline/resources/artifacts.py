"""Artifact tree: the latest good checkpoint, index or report of each asset, swapped in atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

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
        final = self.path(dataset, asset)
        with swap_dir(final) as tmp:
            yield tmp


@contextmanager
def swap_dir(final: Path) -> Iterator[Path]:
    """Write into a sibling temp dir, then swap it in for ``final`` with two renames."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
