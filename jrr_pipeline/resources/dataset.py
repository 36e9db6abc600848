"""Which dataset the pipeline works on: a directory in BEIR, MS MARCO or CSV/Parquet layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


def files_digest(hashes: dict[str, str]) -> str:
    """One version for a set of files: the ``dataset_files`` data version and MLflow dataset digest."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


class DatasetSource(ConfigurableResource):
    data_dir: str = Field(default="", description="Dataset directory (jrr run DATA_DIR or $JRR_DATA_DIR)")
    name: str = Field(default="", description="Dataset name; empty means the directory's name")
    format: str = Field(default="auto", description="auto | beir | msmarco | tabular "
                                                    "(the `dataset.format` setting)")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="CSV/TSV/Parquet column mapping, e.g. {'doc_id': 'id', 'text': 'body'} (the "
                    "`dataset.columns` setting)",
    )

    @property
    def directory(self) -> Path:
        if not self.data_dir:
            raise ValueError(
                "no dataset configured: run `jrr run DATA_DIR` or set JRR_DATA_DIR before `dagster dev`"
            )
        return Path(self.data_dir).expanduser().resolve()

    @property
    def dataset_name(self) -> str:
        return self.name or self.directory.name

    def column_mapping(self):
        """The ``columns`` as a ``ColumnMapping`` (None: the default column names)."""
        from jrr_pipeline.ml.data import ColumnMapping

        return ColumnMapping.from_settings(self.columns) if self.columns else None

    def check(self) -> list[Path]:
        """The checks that read no rows (layout, files, column mapping against the headers);
        returns the files."""
        from jrr_pipeline.ml.data import check_dataset

        return check_dataset(self.directory, self.format, self.column_mapping())

    def files(self) -> list[Path]:
        from jrr_pipeline.ml.data import dataset_files

        return dataset_files(self.directory, self.format)

    def content_hashes(self) -> dict[str, str]:
        """sha256 of every input file, keyed by its path relative to the data directory."""
        return {str(p.relative_to(self.directory)): file_sha256(p) for p in self.files()}

    def load(self):
        from jrr_pipeline.ml.data import load_dataset

        return load_dataset(self.directory, fmt=self.format, name=self.dataset_name,
                            columns=self.column_mapping())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
