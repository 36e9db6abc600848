"""DDP helpers: world info from torchrun's environment, process-group setup, and a torchrun launcher
(one node, or one of several meeting at a rendezvous endpoint)."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
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


DIST_TIMEOUT_ENV = "JRR_DIST_TIMEOUT_S"


def collective_timeout() -> timedelta | None:
    """How long a rank waits at start-up or in a collective before it fails instead of hanging:
    ``JRR_DIST_TIMEOUT_S`` seconds, or torch's default (30 min on gloo, 10 on nccl) when unset."""
    raw = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group when WORLD_SIZE > 1 and none exists yet.

    Backend: nccl on CUDA, gloo on CPU, with `collective_timeout()`. A rank then dumps every
    thread's Python stack to stderr on SIGUSR1 (unless something else handles that signal), which
    `launch_torchrun` sends before it stops a launch that ran past its timeout. Returns True when
    this call created the group (the caller should then destroy it with `cleanup_distributed`).
    """
    _, world = world_info()
    if world <= 1 or dist.is_initialized():
        return False
    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    timeout = collective_timeout()
    options = {} if timeout is None else {"timeout": timeout}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, **options)
    else:
        dist.init_process_group("gloo", **options)
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


class TorchrunTimeout(RuntimeError):
    """A torchrun launch ran past its timeout; its agent and workers were stopped."""


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; [] elsewhere). torchrun starts each worker in a
    session of its own, so killing the agent's process group would leave the workers running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_hung_launch(proc: subprocess.Popen) -> tuple[str, str]:
    """Ask every worker for its stacks (SIGUSR1, see `init_distributed`), then kill the workers
    and the agent; returns what the launch printed."""
    workers = _descendants(proc.pid)
    if hasattr(signal, "SIGUSR1"):
        for worker in workers:  # one at a time: dumps written together interleave on the pipe
            _signal_all([worker], signal.SIGUSR1)
            time.sleep(0.5)
        time.sleep(1.0)
    _signal_all(workers, signal.SIGKILL)
    proc.kill()
    return proc.communicate()


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
    RuntimeError quoting the command and the tail of its output. A launch still running after
    ``timeout`` seconds has its workers' stacks dumped, its workers and agent killed, and raises
    `TorchrunTimeout` with the tail of its output (stacks included).
    """
    cmd = torchrun_command(nproc, module, args, rendezvous)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop_hung_launch(proc)
        raise TorchrunTimeout(f"torchrun ran past {timeout:g} s and was stopped: {' '.join(cmd)}\n"
                              f"{_tail(stdout, stderr)}") from None
    except BaseException:
        _stop_hung_launch(proc)
        raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with status {done.returncode}: {' '.join(cmd)}\n"
            f"{_tail(stdout, stderr)}"
        )
    return done


def _tail(stdout: str, stderr: str) -> str:
    return (stdout[-2000:] + "\n" + stderr[-6000:]).strip()
