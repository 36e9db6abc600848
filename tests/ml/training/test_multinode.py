"""Two torchrun agents on 127.0.0.1 acting as two nodes (static rendezvous, gloo, one process
each) train to exactly the weights of one node with two processes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from jrr_pipeline.ml.modeling import DenseRetriever
from jrr_pipeline.ml.training.distributed import Rendezvous, torchrun_command
from tests.integration.browser import free_port
from tests.ml.training.test_distributed import no_dropout_model  # noqa: F401 (a fixture)

from .ddp_worker import CONFIG, RETRIEVER
from .launching import hung, launch, retry_a_hang


def train(model: Path, out: Path, nproc: int, rendezvous: Rendezvous | None = None) -> None:
    launch(nproc, "tests.ml.training.ddp_worker", [str(model), str(out)], rendezvous=rendezvous)


def train_on_two_nodes(model: Path, out: Path) -> None:
    """Two agents, one process each, meeting at a fresh static rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    with ThreadPoolExecutor(2) as pool:  # node 1 may start first: it waits for node 0's store
        agents = [pool.submit(train, model, out, 1,
                              Rendezvous(nnodes=2, node_rank=rank, endpoint=endpoint))
                  for rank in (1, 0)]
        errors = [agent.exception() for agent in agents]
    # a real failure on one node leaves the other waiting: report the failure, not the wait
    errors = sorted((e for e in errors if e is not None), key=hung)
    if errors:
        raise errors[0]


def test_two_nodes_train_the_weights_of_one_node_with_two_processes(no_dropout_model,  # noqa: F811
                                                                     tmp_path: Path):
    one_node = tmp_path / "one-node"
    one_node.mkdir()
    retry_a_hang(lambda: train(no_dropout_model, one_node, nproc=2), fresh=one_node)
    two_nodes = tmp_path / "two-nodes"  # a folder both "machines" share, as JRR_HOME would be
    two_nodes.mkdir()
    retry_a_hang(lambda: train_on_two_nodes(no_dropout_model, two_nodes), fresh=two_nodes)
    for out in (one_node, two_nodes):
        for rank in (0, 1):
            report = json.loads((out / f"rank{rank}.json").read_text())
            assert report["world"] == 2 and report["completed"]
            assert report["step"] == CONFIG.max_steps
    reference = torch.load(one_node / "rank0.pt", weights_only=True)
    for rank in (0, 1):
        weights = torch.load(two_nodes / f"rank{rank}.pt", weights_only=True)
        assert weights.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(weights[key], value), key  # bit for bit
    initial = DenseRetriever.from_pretrained(str(no_dropout_model), RETRIEVER).state_dict()
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    assert moved > 1e-3  # training did change the weights
    assert (two_nodes / "model" / "jrr_retriever.json").is_file()  # global rank 0 saved it


def test_rendezvous_options() -> None:
    assert Rendezvous().torchrun_args(2) == ["--standalone", "--nnodes=1", "--nproc_per_node=2"]
    args = Rendezvous(nnodes=3, node_rank=2, endpoint="node0:29400").torchrun_args(4)
    assert args == ["--nnodes=3", "--node_rank=2", "--rdzv_backend=static",
                    "--rdzv_endpoint=node0:29400", "--nproc_per_node=4"]
    cmd = torchrun_command(1, "m", ["--config", "x"], Rendezvous(2, 1, "h:1"))
    assert cmd[-4:] == ["-m", "m", "--config", "x"]
    with pytest.raises(ValueError, match="endpoint must be host:port"):
        Rendezvous(nnodes=2)
    with pytest.raises(ValueError, match=r"node_rank must be in \[0, 2\)"):
        Rendezvous(nnodes=2, node_rank=2, endpoint="h:1")


def test_compute_resource_reads_the_node_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from jrr_pipeline.resources import Compute

    for name, value in {"JRR_NPROC": "2", "JRR_NNODES": "2", "JRR_NODE_RANK": "0",
                        "JRR_RDZV_ENDPOINT": "node0:29400"}.items():
        monkeypatch.setenv(name, value)
    compute = Compute.from_env()
    assert compute.distributed
    assert compute.rendezvous() == Rendezvous(2, 0, "node0:29400")
    monkeypatch.setenv("JRR_NODE_RANK", "5")
    with pytest.raises(ValueError, match="node_rank"):
        Compute.from_env()
    monkeypatch.setenv("JRR_NNODES", "two")
    with pytest.raises(ValueError, match="JRR_NNODES='two'"):
        Compute.from_env()
