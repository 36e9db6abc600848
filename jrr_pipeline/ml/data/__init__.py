"""Dataset readers (BEIR, MS MARCO style, CSV/Parquet) and validation helpers.

Everything here is pure Python + polars; the Dagster assets call :func:`load_dataset` and the
validation helpers on the stored tables.
"""

from .errors import DataFormatError
from .loader import Dataset, check_dataset, dataset_files, detect_format, load_dataset
from .tabular import ColumnMapping
from .validation import duplicate_ids, empty_texts, split_overlap, unresolved_qrels

__all__ = [
    "ColumnMapping",
    "DataFormatError",
    "Dataset",
    "check_dataset",
    "dataset_files",
    "detect_format",
    "duplicate_ids",
    "empty_texts",
    "load_dataset",
    "split_overlap",
    "unresolved_qrels",
]
