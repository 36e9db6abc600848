"""Two gloo ranks under torchrun: identical weights, cross-batch negatives, resume, and the
same result as one process over the same global batches."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertModel

from jrr_pipeline.ml.modeling import DenseRetriever
from jrr_pipeline.ml.training import is_main_process, launch_torchrun, train, world_info
from jrr_pipeline.ml.training.distributed import TorchrunTimeout, collective_timeout

from .ddp_worker import CONFIG, RETRIEVER, RecordingTask, examples
from .launching import ENV, REPO, launch, retry_a_hang


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT without dropout, so one process and two ranks compute the same function."""
    out = tmp_path_factory.mktemp("tiny-bert-nodrop")
    model = BertModel.from_pretrained(
        tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_world_info_outside_torchrun() -> None:
    assert world_info() == (0, 1)
    assert is_main_process()


def test_two_gloo_ranks(no_dropout_model, tmp_path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    args = [str(no_dropout_model), str(out)]
    # first launch stops after 2 of 3 steps (as if killed), the second resumes from the state
    retry_a_hang(lambda: launch(2, "tests.ml.training.ddp_worker", [*args, "2"]), fresh=out)
    first = json.loads((out / "rank1.json").read_text())
    assert not first["completed"] and first["step"] == 2 and not (out / "model").exists()
    launch(2, "tests.ml.training.ddp_worker", args)
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
    for report in [first, *reports]:
        assert report["world"] == 2
        for seen in report["seen"]:
            assert seen["local_queries"] == CONFIG.batch_size // 2
            # cross-batch: both ranks' passages are in the logits (2 ranks x 4 queries x 3)
            assert seen["passages_in_logits"] == 2 * (CONFIG.batch_size // 2) * 3
    for report in reports:
        assert report["completed"] and report["resumed_from_step"] == 2
        assert report["step"] == CONFIG.max_steps and len(report["seen"]) == 1
    assert len(reports[0]["history"]) == 1 and reports[1]["history"] == []
    assert (out / "model" / "jrr_retriever.json").is_file()  # rank 0 wrote the output
    assert any((out / "state").glob("step-*"))

    # One process over the same global batches computes the same gradients (the gather's
    # backward sums over ranks and DDP averages), so it must land on (nearly) the same weights.
    torch.manual_seed(0)
    single = RecordingTask(DenseRetriever.from_pretrained(str(no_dropout_model), RETRIEVER))
    train(single, examples(), CONFIG, tmp_path / "single", progress=False)
    assert all(s["passages_in_logits"] == CONFIG.batch_size * 3 for s in single.seen)
    reference = single.retriever.state_dict()
    initial = DenseRetriever.from_pretrained(str(no_dropout_model), RETRIEVER).state_dict()
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    diff = max(float((reference[k] - weights[0][k]).abs().max()) for k in reference)
    assert moved > 1e-3
    assert diff < 0.02 * moved, (diff, moved)  # Adam magnifies float noise on tiny grads


def test_launch_torchrun_reports_failure(tmp_path) -> None:
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with pytest.raises(RuntimeError, match="torchrun exited with status"):
        launch_torchrun(1, "tests.ml.training.no_such_module", [], env=env, cwd=REPO,
                        timeout=120)
    assert os.environ.get("WORLD_SIZE") is None


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has stopped running


def test_a_hung_launch_is_stopped_with_every_ranks_stack(tmp_path) -> None:
    """Rank 1 never reaches the barrier rank 0 waits at: past the timeout the launch raises
    TorchrunTimeout quoting both ranks' Python stacks, and no worker outlives it."""
    env = {k: v for k, v in ENV.items() if k != "JRR_DIST_TIMEOUT_S"}
    with pytest.raises(TorchrunTimeout, match="ran past 40 s") as error:
        launch_torchrun(2, "tests.ml.training.hang_worker", [str(tmp_path)], env=env, cwd=REPO,
                        timeout=40)
    stacks = str(error.value)
    assert "in barrier" in stacks, stacks  # rank 0, waiting
    assert 'hang_worker.py", line 31 in main' in stacks, stacks  # rank 1, asleep before it
    assert stacks.count("Current thread") == 2, stacks  # one clean dump per rank
    pids = [int((tmp_path / f"pid{rank}").read_text()) for rank in (0, 1)]
    deadline = time.monotonic() + 10
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, pids))


def test_a_stuck_collective_fails_after_the_dist_timeout(tmp_path) -> None:
    """With JRR_DIST_TIMEOUT_S the waiting rank fails instead of hanging, so torchrun stops."""
    env = {**ENV, "JRR_DIST_TIMEOUT_S": "3"}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="Timed out waiting 3000ms") as error:
        launch_torchrun(2, "tests.ml.training.hang_worker", [str(tmp_path)], env=env, cwd=REPO,
                        timeout=120)
    assert not isinstance(error.value, TorchrunTimeout)
    assert time.monotonic() - start < 100


def test_collective_timeout_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JRR_DIST_TIMEOUT_S", raising=False)
    assert collective_timeout() is None
    monkeypatch.setenv("JRR_DIST_TIMEOUT_S", "90")
    assert collective_timeout().total_seconds() == 90
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("JRR_DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match=f"JRR_DIST_TIMEOUT_S='{bad}'"):
            collective_timeout()
