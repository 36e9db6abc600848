"""Which stores a process uses: embedded files under JRR_HOME, or PostgreSQL shared by a team.

One setting moves both Dagster's run/event/schedule storage and MLflow's backend store:

- ``JRR_POSTGRES_URL`` (``postgresql://user[:password]@host:port/db``): Dagster keeps its tables in
  that database's default schema and MLflow in the schema ``mlflow`` of the same database (their
  tables clash by name: both have ``runs`` and ``alembic_version``). jrr creates the schema.
  Both connect through psycopg2 (the URL's scheme becomes ``postgresql+psycopg2``).
- ``JRR_DAGSTER_POSTGRES_URL`` / ``JRR_MLFLOW_POSTGRES_URL`` override it per store (used as they
  are; point them at different databases or schemas).
- ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000``, a tracking server) wins over both for MLflow.
- ``JRR_MLFLOW_ARTIFACTS``: artifact root of new MLflow experiments (a shared folder or any MLflow
  artifact URI, e.g. ``s3://bucket/jrr``); default ``$JRR_HOME/mlruns``.

Unset, everything stays embedded: a SQLite Dagster instance in ``$JRR_HOME/dagster`` and
``sqlite:///$JRR_HOME/mlflow.db``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

POSTGRES_URL = "JRR_POSTGRES_URL"
DAGSTER_POSTGRES_URL = "JRR_DAGSTER_POSTGRES_URL"
MLFLOW_POSTGRES_URL = "JRR_MLFLOW_POSTGRES_URL"
MLFLOW_ARTIFACTS = "JRR_MLFLOW_ARTIFACTS"
MLFLOW_SCHEMA = "mlflow"
DRIVER_SCHEME = "postgresql+psycopg2"
_SCHEMES = ("postgresql", "postgres", DRIVER_SCHEME)


@dataclass(frozen=True)
class Store:
    """Where one kind of state lives: ``kind`` ("sqlite", "postgresql", "duckdb", "files",
    "server"), the location (``shown`` masks a URL's password) and the setting that chose it."""

    kind: str
    location: str
    source: str

    @property
    def shown(self) -> str:
        return mask_password(self.location)


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def postgres_url(url: str, name: str) -> str:
    """``url`` with the psycopg2 driver named (``postgresql+psycopg2://``): dagster-postgres needs
    psycopg2, and SQLAlchemy 2.1 would pick psycopg 3 for a plain ``postgresql://``. A URL that
    is not PostgreSQL with a database name is a ValueError naming the setting ``name``."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname or parts.path.strip("/") == "":
        raise ValueError(f"{name}={mask_password(url)!r}: expected "
                         f"postgresql://user[:password]@host:port/database")
    return urlunsplit(parts._replace(scheme=DRIVER_SCHEME))


def dagster_store(dagster_home: Path) -> Store:
    """Dagster's storage: JRR_DAGSTER_POSTGRES_URL, else JRR_POSTGRES_URL, else SQLite files."""
    for name in (DAGSTER_POSTGRES_URL, POSTGRES_URL):
        if _env(name):
            return Store("postgresql", postgres_url(_env(name), name), name)
    return Store("sqlite", str(dagster_home / "storage"), "default")


def mlflow_store(home: Path) -> Store:
    """MLflow's backend: MLFLOW_TRACKING_URI as given, else JRR_MLFLOW_POSTGRES_URL, else
    JRR_POSTGRES_URL in the schema ``mlflow``, else the embedded sqlite file."""
    if _env("MLFLOW_TRACKING_URI"):
        uri = _env("MLFLOW_TRACKING_URI")
        kind = "postgresql" if urlsplit(uri).scheme in _SCHEMES else \
            "sqlite" if uri.startswith("sqlite:") else "server"
        return Store(kind, uri, "MLFLOW_TRACKING_URI")
    if _env(MLFLOW_POSTGRES_URL):
        return Store("postgresql", postgres_url(_env(MLFLOW_POSTGRES_URL), MLFLOW_POSTGRES_URL),
                     MLFLOW_POSTGRES_URL)
    if _env(POSTGRES_URL):
        url = postgres_url(_env(POSTGRES_URL), POSTGRES_URL)
        return Store("postgresql", with_schema(url, MLFLOW_SCHEMA), POSTGRES_URL)
    return Store("sqlite", f"sqlite:///{home / 'mlflow.db'}", "default")


def mlflow_artifact_root(home: Path) -> Store:
    if _env(MLFLOW_ARTIFACTS):
        return Store("files", _env(MLFLOW_ARTIFACTS), MLFLOW_ARTIFACTS)
    return Store("files", (home / "mlruns").as_uri(), "default")


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` first (libpq's ``options=-csearch_path=...``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "options" for key, _ in query):
        raise ValueError(f"{mask_password(url)}: already sets 'options'; give MLflow its own URL "
                         f"in {MLFLOW_POSTGRES_URL}")
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@cache
def prepare_postgres_schema(url: str) -> None:
    """Create the schema named by ``url``'s ``options=-csearch_path=S`` if it does not exist
    (once per process and URL); a URL without one needs nothing."""
    options = dict(parse_qsl(urlsplit(url).query)).get("options", "")
    schema = options.removeprefix("-csearch_path=") if options.startswith("-csearch_path=") else ""
    if not schema:
        return
    import psycopg2
    from psycopg2 import sql

    con = psycopg2.connect(urlunsplit(urlsplit(url)._replace(scheme="postgresql")),
                           connect_timeout=10)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    finally:
        con.close()


def mlflow_tracking_uri(home: Path) -> str:
    """The tracking URI MLflow clients of this process use, its PostgreSQL schema created."""
    store = mlflow_store(home)
    if store.kind == "postgresql":
        prepare_postgres_schema(store.location)
    return store.location
