"""DDP helpers: world info from torchrun's environment, process-group setup, and a torchrun launcher
(one node, or one of several meeting at a rendezvous endpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """(rank, world_size) of this process: from the process group if initialised, else torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single-process run)."""
    return world_info()[0] == 0


def local_rank() -> int:
    """LOCAL_RANK set by torchrun (0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def training_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group when WORLD_SIZE > 1 and none exists yet.

    Backend: nccl on CUDA, gloo on CPU. Returns True when this call created the group (the caller
    should then destroy it with `cleanup_distributed`).
    """
    _, world = world_info()
    if world <= 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Synchronise ranks (no-op outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Rendezvous:
    """Where torchrun's agents meet: ``nnodes`` machines, this one being ``node_rank``, all
    reaching the agent of node 0 at ``endpoint`` (``host:port``; torchrun's static rendezvous,
    so global ranks are ``node_rank * nproc + local_rank`` on every launch). One node with no
    endpoint is a standalone launch on a free local port."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"rendezvous: nnodes must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"rendezvous: node_rank must be in [0, {self.nnodes}), "
                             f"got {self.node_rank}")
        if self.nnodes > 1 or self.endpoint:
            host, _, port = self.endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"rendezvous: endpoint must be host:port (node 0's address), "
                                 f"got {self.endpoint!r}")

    @property
    def standalone(self) -> bool:
        return self.nnodes == 1 and not self.endpoint

    def torchrun_args(self, nproc: int) -> list[str]:
        """torchrun's options for ``nproc`` processes on this node."""
        if self.standalone:
            return ["--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
        return [f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}",
                "--rdzv_backend=static", f"--rdzv_endpoint={self.endpoint}",
                f"--nproc_per_node={nproc}"]


def torchrun_command(nproc: int, module: str, args: list[str],
                     rendezvous: Rendezvous | None = None) -> list[str]:
    """``python -m torch.distributed.run OPTIONS -m module args...`` (what every node runs)."""
    if nproc < 1:
        raise ValueError(f"launch_torchrun: nproc must be >= 1, got {nproc}")
    options = (rendezvous or Rendezvous()).torchrun_args(nproc)
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *args]


def launch_torchrun(
    nproc: int,
    module: str,
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    check: bool = True,
    rendezvous: Rendezvous | None = None,
) -> subprocess.CompletedProcess:
    """Run ``module`` under torchrun with ``nproc`` processes on this node.

    Without ``rendezvous`` (or with one node and no endpoint) this is
    ``torchrun --standalone --nnodes=1``, which picks a free local rendezvous port, so several
    launches can run side by side. With ``Rendezvous(nnodes, node_rank, endpoint)`` this node's
    agent joins the others at ``endpoint``; every node runs the same command with its own
    ``node_rank``. Output is captured (text). With ``check``, a non-zero exit raises
    RuntimeError quoting the command and the tail of its output.
    """
    cmd = torchrun_command(nproc, module, args, rendezvous)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]).strip()
        raise RuntimeError(
            f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}\n{tail}"
        )
    return proc
