"""A person's path through the Dagster UI: Materialize all, watch the run succeed, read the report.

Runs the real webserver and daemon (the instance's QueuedRunCoordinator needs the daemon to launch a
run the UI submits) and drives Debian's Chromium with Playwright.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.browser import (
    chromium_page,
    free_port,
    save_screenshot,
    server,
    tail,
    wait_http,
    wait_tcp,
)
from tests.integration.test_webserver import LOCATION_ERRORS, graphql

pytestmark = pytest.mark.integration

RUNS = "{ runsOrError(limit: 5) { ... on Runs { results { runId status jobName } } } }"
RUN_FAILURE = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } } } }"""
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def wait_for_assets(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
        if nodes:
            return
        errors = graphql(port, LOCATION_ERRORS)
        if "PythonError" in json.dumps(errors):
            pytest.fail(f"code location failed to load: {errors}")
        time.sleep(1)
    pytest.fail("the code location's assets never appeared")


def wait_for_run(port: int, deadline: float) -> dict:
    run: dict = {}
    while time.monotonic() < deadline:
        runs = graphql(port, RUNS)["data"]["runsOrError"]["results"]
        if runs:
            run = runs[0]
            if run["status"] in DONE:
                return run
        time.sleep(3)
    pytest.fail(f"the run launched from the UI did not finish in time: {run}")


def failure_details(port: int, run_id: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": RUN_FAILURE, "variables": {"id": run_id}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        events = json.loads(resp.read())["data"]["logsForRun"].get("events", [])
    return "; ".join(f"{e['stepKey']}: {e['error']['message'][:500]}" for e in events if "stepKey" in e)


def drive_the_ui(base: str, port: int, web, logs: dict[str, Path], deadline: float,
                 tmp_path: Path) -> str:
    """Materialize all from the lineage page, wait for the run, return the report page's text."""
    from playwright.sync_api import expect

    wait_http(f"{base}/server_info", web, logs["webserver"], timeout_s=180)
    wait_for_assets(port, deadline)
    with chromium_page(tmp_path / "chromium", width=1920, height=1080) as page:
        # a first visit may open the "Join the Dagster community" dialog over the page
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda b: b.click())

        page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        page.get_by_role("button", name="Materialize all").click()
        expect(page.get_by_text(re.compile(r"Launched run"))).to_be_visible(timeout=60_000)

        run = wait_for_run(port, deadline)
        details = "" if run["status"] == "SUCCESS" else failure_details(port, run["runId"])
        assert run["status"] == "SUCCESS", f"{details}\n--- daemon log ---\n{tail(logs['daemon'])}"

        page.goto(f"{base}/runs/{run['runId']}", wait_until="domcontentloaded")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        save_screenshot(page, "dagster-run.png")

        page.goto(f"{base}/assets/evaluation_report", wait_until="domcontentloaded")
        expect(page.get_by_text("mlflow_run_id", exact=True)).to_be_visible()
        expect(page.get_by_text("bm25", exact=True).first).to_be_visible()
        text = page.locator("body").inner_text()
        save_screenshot(page, "dagster-ui.png")
    return text


def test_materialize_all_from_the_dagster_ui(beir_dir: Path, jrr_env: Path, tmp_path: Path):
    from jrr_pipeline.resources.home import dagster_home

    dagster_home()  # dagster.yaml (telemetry off) under the test's DAGSTER_HOME
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "JRR_DATA_DIR": str(beir_dir), "JRR_PRESET": "ci", "JRR_HOME": str(jrr_env),
           "DAGSTER_HOME": str(jrr_env / "dagster")}
    bindir = Path(sys.executable).parent
    # one code server shared by the webserver and the daemon: the code location loads once
    grpc = ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)]
    logs = {name: tmp_path / f"{name}.log" for name in ("code", "webserver", "daemon")}
    deadline = time.monotonic() + 420
    with server([str(bindir / "dagster"), "api", "grpc", "-m", "jrr_pipeline.definitions",
                 "-h", "127.0.0.1", "-p", str(grpc_port)], env, tmp_path, logs["code"]) as code:
        wait_tcp(grpc_port, code, logs["code"], deadline)
        with (
            server([str(bindir / "dagster-webserver"), *grpc, "-h", "127.0.0.1", "-p", str(port)],
                   env, tmp_path, logs["webserver"]) as web,
            server([str(bindir / "dagster-daemon"), "run", *grpc], env, tmp_path, logs["daemon"]),
        ):
            text = drive_the_ui(base, port, web, logs, deadline, tmp_path)

    report = json.loads((jrr_env / "reports" / beir_dir.name / "evaluation.json").read_text())
    shown = re.search(r"\bbm25\s+(\d\.\d{4})", text)
    assert shown, text[:3000]
    # the markdown table in the UI carries the number the report file holds (4 decimals)
    assert shown.group(1) == f"{report['systems']['bm25']['nDCG@10']:.4f}"
    assert report["mlflow_run_id"] in text
