"""A `jrr run` killed with SIGKILL must not leave pool slots that block every later run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from dagster import DagsterRunStatus, instance_for_test
from dagster._core.test_utils import create_run_for_test

from jrr_pipeline.ops.runner import HOST_TAG, PID_TAG, reap_dead_cli_runs


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_cli_runs_are_failed_and_their_pool_slots_freed(jrr_env: Path):
    (jrr_env / "dagster").mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(jrr_env / "dagster")) as instance:
        host = socket.gethostname()
        dead = create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags={
            "jrr/source": "cli", PID_TAG: str(dead_pid()), HOST_TAG: host})
        alive = create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags={
            "jrr/source": "cli", PID_TAG: "1", HOST_TAG: host})
        elsewhere = create_run_for_test(instance, status=DagsterRunStatus.STARTED, tags={
            "jrr/source": "cli", PID_TAG: str(dead_pid()), HOST_TAG: "another-host"})
        storage = instance.event_log_storage
        storage.set_concurrency_slots("jrr_device", 1)
        assert storage.claim_concurrency_slot("jrr_device", dead.run_id, "warmup_reranker").is_claimed

        blocked = storage.claim_concurrency_slot("jrr_device", alive.run_id, "dense_negatives")
        assert not blocked.is_claimed  # the dead run holds the only slot

        assert reap_dead_cli_runs(instance) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
        assert instance.get_run_by_id(elsewhere.run_id).status == DagsterRunStatus.STARTED
        assert storage.get_concurrency_info("jrr_device").active_slot_count == 0
        assert reap_dead_cli_runs(instance) == []
