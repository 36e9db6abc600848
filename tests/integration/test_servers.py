"""`jrr mlflow` and `jrr ui` (what `make mlflow` / `make ui` run) serve on 127.0.0.1 and stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.browser import free_port, wait_http

JRR = str(Path(sys.executable).parent / "jrr")


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_with_sigterm(proc: subprocess.Popen, log: Path) -> None:
    descendants = children_of(proc.pid)
    assert descendants, "the server runs as a child process"
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in descendants if alive(p)]
    assert not left, f"processes left after SIGTERM: {left}\n{log.read_text()[-2000:]}"


def test_jrr_mlflow_serves_the_project_store_and_stops_on_sigterm(jrr_env: Path, tmp_path: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{jrr_env / 'mlflow.db'}")  # a run logged without a server
    jrr_env.mkdir(parents=True, exist_ok=True)
    experiment = mlflow.create_experiment("embedded", artifact_location=(jrr_env / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="logged-before-the-server") as run:
        mlflow.log_metric("ndcg", 0.5)
    port = free_port()
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([JRR, "mlflow", "--port", str(port)], env=dict(os.environ),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout_s=120)
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        assert client.get_run(run.info.run_id).data.metrics["ndcg"] == 0.5
    finally:
        stop_with_sigterm(proc, log)
    assert proc.returncode is not None


def test_jrr_ui_starts_webserver_and_daemon_and_stops_on_sigterm(jrr_env: Path, beir_dir: Path,
                                                                  tmp_path: Path):
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([JRR, "ui", str(beir_dir), "--preset", "ci", "--port", str(port)],
                                env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/server_info", proc, log, timeout_s=240)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10) as response:
            assert b"dagster_webserver_version" in response.read()
        deadline = time.monotonic() + 120
        while not any("daemon" in cmdline(p) for p in children_of(proc.pid)):
            assert time.monotonic() < deadline, f"no dagster daemon process:\n{log.read_text()[-2000:]}"
            time.sleep(1)
    finally:
        stop_with_sigterm(proc, log)
