"""A throwaway PostgreSQL cluster on 127.0.0.1 for the tests: Debian's server binaries
(``apt-get install postgresql``; ``make test`` installs it), ``initdb`` + ``pg_ctl`` in a temp dir.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user the
Debian package creates and every server command runs through ``runuser -u postgres``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.browser import free_port

USER = "jrr"  # the cluster's superuser (trust authentication on 127.0.0.1 only)
DATABASE = "jrr"


def server_bin() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and pg_ctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        pytest.fail("PostgreSQL server binaries missing under /usr/lib/postgresql: install "
                    "Debian's server (`make postgres`, i.e. apt-get install -y postgresql)")
    return found[-1].parent


@dataclass
class Cluster:
    root: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Rows of ``query`` (autocommit)."""
        return _execute(self.url, query, params)


def _execute(url: str, query: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    con = psycopg2.connect(url)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        con.close()


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and no 'postgres' user to own the test cluster; "
                    "Debian's postgresql package creates it")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        extra = log.read_text()[-2000:] if log and log.exists() else ""
        pytest.fail(f"{what} failed ({proc.returncode}): {proc.stdout[-1000:]}"
                    f"{proc.stderr[-2000:]}\n{extra}")


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """initdb a cluster in a temp dir, start it on a free 127.0.0.1 port (socket in the same
    dir), create the database; stop it immediately and delete everything afterwards."""
    binaries = server_bin()
    root = Path(tempfile.mkdtemp(prefix="jrr-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    cluster = Cluster(root=root, port=free_port(), bin=binaries)
    started = False
    try:
        _run([str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
              "-E", "UTF8", "--no-sync"], "initdb")
        options = f"-h 127.0.0.1 -p {cluster.port} -k {root} -c fsync=off"
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", "60", "start"], "pg_ctl start", log)
        started = True
        _execute(f"postgresql://{USER}@127.0.0.1:{cluster.port}/postgres",
                 f"CREATE DATABASE {DATABASE}")
        yield cluster
    finally:
        if started:
            subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m",
                                      "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
