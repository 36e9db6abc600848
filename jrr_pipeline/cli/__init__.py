"""The ``jrr`` command line: runs, reports, lineage, search and the servers."""

from jrr_pipeline.cli.main import main

__all__ = ["main"]
