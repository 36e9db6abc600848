"""File locks keep a second process off the warehouse and the device: it waits, or fails clearly."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from jrr_pipeline.resources import Warehouse
from jrr_pipeline.resources.locks import ResourceBusyError, exclusive, holder_of


def hold(lock: Path, seconds: float, ready: Path) -> subprocess.Popen:
    """Another process that takes ``lock`` and keeps it for ``seconds``."""
    code = textwrap.dedent(f"""
        import time, pathlib
        from jrr_pipeline.resources.locks import exclusive
        with exclusive(pathlib.Path({str(lock)!r}), "test resource", owner="holder-run"):
            pathlib.Path({str(ready)!r}).write_text("ok")
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "holder process died"
        assert time.monotonic() < deadline, "holder never took the lock"
        time.sleep(0.05)
    return proc


def test_second_process_fails_after_timeout_naming_the_holder(tmp_path: Path):
    lock = tmp_path / "res.lock"
    holder = hold(lock, 30, tmp_path / "ready")
    try:
        started = time.monotonic()
        with pytest.raises(ResourceBusyError) as err, exclusive(lock, "test resource", timeout_s=0.5):
            pass
        assert time.monotonic() - started >= 0.5
        message = str(err.value)
        assert f"pid {holder.pid}" in message and "holder-run" in message and str(lock) in message
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock, "test resource", timeout_s=5):  # the OS dropped the dead holder's lock
        pass


def test_second_process_waits_for_the_first(tmp_path: Path):
    lock = tmp_path / "res.lock"
    holder = hold(lock, 1.5, tmp_path / "ready")
    waits: list[str] = []
    started = time.monotonic()
    with exclusive(lock, "test resource", timeout_s=60, on_wait=waits.append):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.5 and len(waits) == 1 and "waiting up to 60s" in waits[0]


def held_elsewhere(lock: Path) -> bool:
    """Whether a second open file (as another process would have) fails to take ``lock``."""
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_reentrant_in_one_process(tmp_path: Path):
    lock = tmp_path / "res.lock"
    with exclusive(lock, "r", timeout_s=0.1):
        with exclusive(lock, "r", timeout_s=0.1):  # not re-entrant: ResourceBusyError after 0.1 s
            assert held_elsewhere(lock) and holder_of(lock)["pid"] == os.getpid()
        # leaving the inner block keeps the outer block's lock
        assert held_elsewhere(lock) and holder_of(lock)["pid"] == os.getpid()
    assert not held_elsewhere(lock) and holder_of(lock) == {}


def test_busy_warehouse_is_left_untouched(tmp_path: Path):
    warehouse = Warehouse(path=str(tmp_path / "w.duckdb"), lock_timeout_s=0.5)
    metrics = pl.DataFrame({"run_id": ["a"], "dataset": ["d"], "system": ["bm25"], "split": ["test"],
                            "measure": ["nDCG@10"], "value": [0.5]})
    warehouse.append("metrics", metrics.with_columns(created_at=pl.lit(None, pl.Datetime)))
    holder = hold(warehouse.lock_file, 30, tmp_path / "ready")
    try:
        with pytest.raises(ResourceBusyError, match="DuckDB warehouse"):
            warehouse.append("metrics", metrics.with_columns(created_at=pl.lit(None, pl.Datetime)))
    finally:
        holder.kill()
        holder.wait()
    assert warehouse.table("metrics")["run_id"].to_list() == ["a"]
