"""The real Dagster webserver serves the code location on 127.0.0.1 and lists the asset graph."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXPECTED = {"dataset_files", "corpus", "queries", "qrels", "bm25_index", "bm25_negatives",
            "joint_retriever", "joint_reranker", "faiss_index", "evaluation_report"}


LOCATION_ERRORS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_webserver_lists_assets(beir_dir: Path, jrr_env: Path):
    port = free_port()
    env = {**os.environ, "JRR_DATA_DIR": str(beir_dir), "JRR_PRESET": "ci",
           "DAGSTER_HOME": str(jrr_env / "dagster")}
    from jrr_pipeline.resources.home import dagster_home

    dagster_home()  # writes dagster.yaml (telemetry off) under DAGSTER_HOME
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bindir / "dagster-webserver"), "-m", "jrr_pipeline.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=jrr_env.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    pytest.fail(f"webserver did not come up (rc={proc.poll()}):\n{out[-3000:]}")
                time.sleep(1)
        nodes: dict[str, str] = {}
        while not nodes and time.monotonic() < deadline:  # the code location loads after startup
            data = graphql(port, "{ assetNodes { assetKey { path } groupName } }")
            nodes = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in data["data"]["assetNodes"]}
            errors = graphql(port, LOCATION_ERRORS)
            if "PythonError" in json.dumps(errors):
                break
            time.sleep(0 if nodes else 1)
        assert set(nodes) >= EXPECTED, errors
        assert nodes["bm25_negatives"] == "negatives" and nodes["corpus"] == "data"
        assert nodes["joint_retriever"] == "joint" and nodes["faiss_index"] == "serving"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None
