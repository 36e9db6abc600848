"""``jrr ui`` and ``jrr mlflow``: the Dagster webserver + daemon and an MLflow server on 127.0.0.1.

Both run on the project's own stores (the Dagster instance and the MLflow sqlite file under
``JRR_HOME``), in the foreground, and stop with their children on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jrr_pipeline.resources.home import dagster_home, jrr_home


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def mlflow_server_command(port: int, home: Path | None = None) -> list[str]:
    """An MLflow server on the same backend store (sqlite file or PostgreSQL, resources/stores.py)
    and artifact folder that the pipeline writes."""
    from jrr_pipeline.resources.stores import MLFLOW_ARTIFACTS, mlflow_store, mlflow_tracking_uri

    home = home or jrr_home()
    if mlflow_store(home).kind == "server":
        raise ValueError("MLFLOW_TRACKING_URI names a tracking server already; unset it to serve "
                         "the project's own store")
    artifacts = os.environ.get(MLFLOW_ARTIFACTS, "").strip() or str(home / "mlruns")
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    return [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", mlflow_tracking_uri(home),
            "--artifacts-destination", artifacts]


def ui_command(port: int) -> list[str]:
    """``dagster dev``: webserver and daemon (schedules, sensors, run queue) for the code location."""
    return [_bin("dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
            "-m", "jrr_pipeline.definitions"]


def ui_environment(data_dir: str, preset: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(dagster_home())
    env["JRR_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    env["JRR_PRESET"] = preset
    return env


def serve(cmd: list[str], env: dict[str, str] | None = None, grace_s: float = 20.0) -> int:
    """Run ``cmd`` in the foreground in its own process group; SIGINT/SIGTERM stop the whole group.

    The group gets SIGTERM (so servers shut down cleanly), then SIGKILL if it is still up after
    ``grace_s``. The handler only signals; waiting happens in the loop below (a handler that waits
    on the child itself would deadlock with the interrupted ``wait``).
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline: list[float] = []

    def stop(signum, _frame):
        if not deadline:
            deadline.append(time.monotonic() + grace_s)
            _kill_group(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    _kill_group(proc.pid, signal.SIGKILL)
        return code
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        _kill_group(proc.pid, signal.SIGKILL)  # whatever of the group outlived its leader
        if proc.poll() is None:
            proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
