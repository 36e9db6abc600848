"""What the fault tests drive and look at: ``jrr`` in this process or as a real process, the
warehouse's tables, and the one error line."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from tests.conftest import isolate_home

DATA_TABLES = ("corpus", "queries", "qrels")
RUN_SUFFIX = r" \(run [0-9a-f-]{36}, failed after \d+\.\ds\)"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = (self.out + self.err).strip().splitlines()
        return lines[-1] if lines else ""

    def assert_clean_error(self, code: int, problem: str, during_run: bool) -> None:
        """Exit ``code``; the last line is ``jrr: error: <problem>`` (+ the run id and time when
        the failure happened in a Dagster run); no stack trace anywhere."""
        text = self.out + self.err
        assert self.code == code, text[-3000:]
        assert "Traceback" not in text and 'File "' not in text, text[-3000:]
        assert "Error: DataFormatError" not in text  # never the class name twice
        last = self.err.strip().splitlines()[-1]
        pattern = re.escape(f"jrr: error: {problem}") + (RUN_SUFFIX if during_run else "")
        assert re.fullmatch(pattern, last), f"\n{last}\n!=\n{problem}"


def jrr(*args: str) -> Result:
    """``jrr ARGS`` in this process (what the console script calls), output captured."""
    from jrr_pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Result(code, out.getvalue(), err.getvalue())


def jrr_process(home: Path, *args: str, env_extra: dict[str, str] | None = None,
                stdout=subprocess.PIPE, **popen) -> subprocess.Popen:
    """``jrr ARGS`` as its own process on ``home`` (stdout and stderr merged into ``stdout``,
    text); ``env_extra`` adds variables (JRR_SETTINGS only when given)."""
    env = {k: v for k, v in os.environ.items() if k != "JRR_SETTINGS"}
    env.update({"JRR_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
                "PYTHONUNBUFFERED": "1", **(env_extra or {})})
    return subprocess.Popen([str(Path(sys.executable).parent / "jrr"), *args], env=env,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, **popen)


def fingerprints(home: Path, tables: tuple[str, ...] = DATA_TABLES) -> dict[str, str]:
    """Each table's content hash (the data tables' Dagster data version)."""
    from jrr_pipeline.assets.common import frame_version

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return {t: frame_version(con.execute(f"SELECT * FROM {t}").pl()) for t in tables}
    finally:
        con.close()


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    return Path(shutil.copytree(source, target, symlinks=True))


@contextlib.contextmanager
def home_for(root: Path):
    """An isolated JRR_HOME (and Dagster instance) under ``root`` for a module, cwd in it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = isolate_home(root, monkeypatch)
        monkeypatch.chdir(root)
        monkeypatch.delenv("JRR_SETTINGS", raising=False)
        yield home, monkeypatch
