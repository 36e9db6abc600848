"""The DuckDB warehouse: one file, DESIGN.md's tables, every write in one transaction."""

from __future__ import annotations

import contextlib
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
    "generated_queries": (
        "query_id VARCHAR, text VARCHAR, doc_id VARCHAR, round INTEGER, retriever_loss DOUBLE, "
        "relevance DOUBLE, penalty DOUBLE, reward DOUBLE, generator_version VARCHAR"
    ),
    "metrics": (
        "run_id VARCHAR, dataset VARCHAR, system VARCHAR, split VARCHAR, measure VARCHAR, "
        "value DOUBLE, created_at TIMESTAMP"
    ),
}


class WarehouseError(RuntimeError):
    """The DuckDB file cannot be opened, read or written; the message says how to recover."""


def warehouse_error(file: Path, err: duckdb.Error) -> WarehouseError:
    """One line for a DuckDB I/O error: a corrupted file, a write that found no space, ..."""
    detail = str(err).strip().split("\n", 1)[0].removeprefix("IO Error: ")
    broken = {"not a valid DuckDB database file": "not a DuckDB database file",
              "Corrupt database file": "corrupted DuckDB file (a block checksum does not match)"}
    for found, what in broken.items():
        if found in detail:
            return WarehouseError(
                f"{file}: {what}; move it aside (mv {file} {file}.broken) and run `jrr run` "
                f"again: it rebuilds the tables from the dataset")
    for why in ("File too large", "No space left on device", "Disk quota exceeded"):
        if why in detail:
            return WarehouseError(
                f"{file}: could not write the tables ({why}); the previous tables are "
                f"unchanged; free space or raise the file-size limit, then run `jrr run` again")
    return WarehouseError(f"{file}: {detail}")


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
            try:
                con = duckdb.connect(str(self.file), read_only=read_only)
            except duckdb.Error as err:
                raise warehouse_error(self.file, err) from None
            try:
                yield con
            except (duckdb.IOException, duckdb.TransactionException) as err:
                raise warehouse_error(self.file, err) from None
            finally:
                con.close()

    def replace_tables(self, frames: Mapping[str, pl.DataFrame]) -> None:
        """Replace whole tables atomically: all of them or none (one transaction)."""
        with self.connect() as con, _transaction(con):
            for name, frame in frames.items():
                _create(con, name, replace=True)
                _insert(con, name, frame)

    def replace_where(self, table: str, where: str, params: list, frame: pl.DataFrame) -> None:
        """Delete the rows matching ``where`` and insert ``frame`` in one transaction."""
        with self.connect() as con, _transaction(con):
            _create(con, table, replace=False)
            con.execute(f"DELETE FROM {table} WHERE {where}", params)
            _insert(con, table, frame)

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


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit the block's writes, or roll them back (a commit that failed has nothing left to
    roll back)."""
    con.begin()
    try:
        yield
        con.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise


def _create(con: duckdb.DuckDBPyConnection, name: str, replace: bool) -> None:
    verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    con.execute(f"{verb} {name} ({SCHEMAS[name]})")


def _insert(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    if frame.height == 0:
        return
    arrow = frame.to_arrow()  # noqa: F841  (referenced by name in the SQL below)
    columns = ", ".join(frame.columns)
    con.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM arrow")
