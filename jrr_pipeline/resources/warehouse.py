"""The DuckDB warehouse: one file, DESIGN.md's tables, every write in one transaction."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
from dagster import ConfigurableResource
from pydantic import Field

from jrr_pipeline.resources.home import jrr_home
from jrr_pipeline.resources.locks import exclusive

SCHEMAS: dict[str, str] = {
    "corpus": "doc_id VARCHAR PRIMARY KEY, title VARCHAR, text VARCHAR",
    "queries": "query_id VARCHAR PRIMARY KEY, text VARCHAR",
    "qrels": "query_id VARCHAR, doc_id VARCHAR, relevance INTEGER, split VARCHAR",
    "negatives": "query_id VARCHAR, doc_id VARCHAR, rank INTEGER, score DOUBLE, source VARCHAR",
    "candidates": "query_id VARCHAR, doc_id VARCHAR, label INTEGER, source VARCHAR, ce_score DOUBLE",
    "metrics": (
        "run_id VARCHAR, dataset VARCHAR, system VARCHAR, split VARCHAR, measure VARCHAR, "
        "value DOUBLE, created_at TIMESTAMP"
    ),
}


class Warehouse(ConfigurableResource):
    """A DuckDB file (default ``$JRR_HOME/warehouse.duckdb``) holding the pipeline's tables.

    A DuckDB file open read-write in one process cannot be opened by another, so every method opens
    a short-lived connection and closes it before returning.
    """

    path: str = Field(default="", description="DuckDB file; empty means $JRR_HOME/warehouse.duckdb")

    @property
    def file(self) -> Path:
        return Path(self.path).expanduser().resolve() if self.path else jrr_home() / "warehouse.duckdb"

    lock_timeout_s: float = Field(
        default=-1, description="wait this long for another process's connection; -1 = JRR_LOCK_TIMEOUT_S")

    @property
    def lock_file(self) -> Path:
        return self.file.with_name(self.file.name + ".lock")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held under the file's lock: DuckDB lets one process open a file read-write,
        so a second run waits here for its turn instead of failing inside DuckDB."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        if read_only and not self.file.exists():
            raise FileNotFoundError(f"{self.file}: no warehouse yet; materialize the data assets first")
        timeout = None if self.lock_timeout_s < 0 else self.lock_timeout_s
        with exclusive(self.lock_file, f"DuckDB warehouse {self.file}", timeout, owner="warehouse"):
            con = duckdb.connect(str(self.file), read_only=read_only)
            try:
                yield con
            finally:
                con.close()

    def replace_tables(self, frames: Mapping[str, pl.DataFrame]) -> None:
        """Replace whole tables atomically: all of them or none (one transaction)."""
        with self.connect() as con:
            con.begin()
            try:
                for name, frame in frames.items():
                    _create(con, name, replace=True)
                    _insert(con, name, frame)
                con.commit()
            except BaseException:
                con.rollback()
                raise

    def replace_where(self, table: str, where: str, params: list, frame: pl.DataFrame) -> None:
        """Delete the rows matching ``where`` and insert ``frame`` in one transaction."""
        with self.connect() as con:
            con.begin()
            try:
                _create(con, table, replace=False)
                con.execute(f"DELETE FROM {table} WHERE {where}", params)
                _insert(con, table, frame)
                con.commit()
            except BaseException:
                con.rollback()
                raise

    def append(self, table: str, frame: pl.DataFrame) -> None:
        self.replace_where(table, "false", [], frame)

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).pl()

    def table(self, name: str) -> pl.DataFrame:
        if name not in SCHEMAS:
            raise KeyError(f"unknown table {name!r}; known: {sorted(SCHEMAS)}")
        return self.query(f"SELECT * FROM {name}")

    def has_table(self, name: str) -> bool:
        if not self.file.exists():
            return False
        sql = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
        with self.connect(read_only=True) as con:
            return con.execute(sql, [name]).fetchone()[0] > 0


def _create(con: duckdb.DuckDBPyConnection, name: str, replace: bool) -> None:
    verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    con.execute(f"{verb} {name} ({SCHEMAS[name]})")


def _insert(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    if frame.height == 0:
        return
    arrow = frame.to_arrow()  # noqa: F841  (referenced by name in the SQL below)
    columns = ", ".join(frame.columns)
    con.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM arrow")
