"""The ci pipeline logs to a real MLflow tracking server; its UI shows the evaluation run."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from dagster import instance_for_test

from tests.integration.browser import chromium_page, free_port, save_screenshot, server, wait_http

pytestmark = pytest.mark.integration


def open_run_in_ui(uri: str, experiment_id: str, run_name: str, profile: Path) -> str:
    """Find the run by name in the experiment's run list, open it, screenshot it; the page's text."""
    from playwright.sync_api import expect

    with chromium_page(profile, width=1600, height=1300) as page:
        # MLflow 3 opens experiments in its GenAI view, with a guidance popover over it
        page.add_locator_handler(page.get_by_role("button", name="Got it"), lambda b: b.click())
        page.goto(f"{uri}/#/experiments/{experiment_id}", wait_until="domcontentloaded")
        page.get_by_text("Model training", exact=True).first.click()
        page.get_by_role("link", name=run_name).first.click()
        expect(page.get_by_text("dagster.run_id").first).to_be_visible()
        expect(page.get_by_text("bm25.nDCG_at_10").first).to_be_visible()
        text = page.locator("body").inner_text()
        save_screenshot(page, "mlflow-ui.png")
    return text


def test_evaluation_run_in_the_mlflow_ui(beir_dir: Path, jrr_env: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    from jrr_pipeline.ops.runner import run_pipeline

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--default-artifact-root", str(tmp_path / "mlflow-artifacts")]
    with server(cmd, dict(os.environ), tmp_path, log) as proc:
        wait_http(f"{uri}/health", proc, log, timeout_s=120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
        with instance_for_test(temp_dir=str(jrr_env / "dagster")) as instance:
            outcome = run_pipeline(str(beir_dir), preset="ci", echo=None, instance=instance)
        assert outcome.success, outcome.failure
        report = json.loads(outcome.report_path.read_text())

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(report["mlflow_run_id"])  # stored by the server, not a local file
        assert run.info.run_name == f"evaluation-{beir_dir.name}"
        assert run.data.tags["dagster.run_id"] == outcome.run_id
        ndcg = report["systems"]["bm25"]["nDCG@10"]
        assert run.data.metrics["bm25.nDCG_at_10"] == pytest.approx(ndcg)
        assert "report/evaluation.json" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}

        body = open_run_in_ui(uri, run.info.experiment_id, run.info.run_name, tmp_path / "chromium")

    assert run.info.run_id in body and outcome.run_id in body  # run id and its dagster.run_id tag
    shown = re.search(r"bm25\.nDCG_at_10\s+([0-9.]+)", body)
    assert shown and float(shown.group(1)) == pytest.approx(ndcg, abs=1e-3), body[:3000]
