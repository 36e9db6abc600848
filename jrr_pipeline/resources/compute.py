"""Compute settings: device, dtype, threads, training processes and the nodes they span.

Training runs in process, or under torchrun when ``nproc > 1`` or ``nnodes > 1``: ``nproc``
processes on each of ``nnodes`` machines that meet at ``rdzv_endpoint`` (node 0's host:port).
Defaults come from ``JRR_NPROC``, ``JRR_NNODES``, ``JRR_NODE_RANK`` and ``JRR_RDZV_ENDPOINT``
(``Compute.from_env``); Dagster run config can set each field too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:
    from jrr_pipeline.ml.training.distributed import Rendezvous

ENV_FIELDS = {"nproc": "JRR_NPROC", "nnodes": "JRR_NNODES", "node_rank": "JRR_NODE_RANK",
              "rdzv_endpoint": "JRR_RDZV_ENDPOINT"}


class Compute(ConfigurableResource):
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda if present")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA or on CPUs with AMX/AVX512-BF16"
    )
    threads: int = Field(default=0, description="torch intra-op threads; 0 keeps torch's default")
    nproc: int = Field(default=1, description="training processes per node (>1 launches torchrun)")
    nnodes: int = Field(default=1, description="machines a training spans (>1 launches torchrun; "
                                               "start the same run on the others, see README)")
    node_rank: int = Field(default=0, description="this machine's rank among nnodes (0 hosts "
                                                  "the rendezvous)")
    rdzv_endpoint: str = Field(default="", description="host:port of node 0's torchrun agent "
                                                       "(needed when nnodes > 1)")

    @classmethod
    def from_env(cls) -> Compute:
        """A Compute whose process and node fields come from JRR_NPROC, JRR_NNODES,
        JRR_NODE_RANK and JRR_RDZV_ENDPOINT where set."""
        import os

        values: dict = {}
        for name, env in ENV_FIELDS.items():
            raw = os.environ.get(env, "").strip()
            if not raw:
                continue
            if name == "rdzv_endpoint":
                values[name] = raw
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"{env}={raw!r}: expected a whole number") from None
        compute = cls(**values)
        compute.rendezvous()  # validates the combination
        return compute

    def rendezvous(self) -> Rendezvous:
        """The torchrun rendezvous of these settings (a ValueError when they do not fit)."""
        from jrr_pipeline.ml.training.distributed import Rendezvous

        return Rendezvous(nnodes=self.nnodes, node_rank=self.node_rank,
                          endpoint=self.rdzv_endpoint)

    @property
    def distributed(self) -> bool:
        """Whether training launches torchrun (several processes or several nodes)."""
        return self.nproc > 1 or self.nnodes > 1

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def use_bf16(self) -> bool:
        import torch

        from jrr_pipeline.ml.precision import use_bf16

        setting = {"auto": "auto", "bf16": "on", "fp32": "off"}[self.dtype]
        return use_bf16(setting, torch.device(self.torch_device()))

    lock_timeout_s: float = Field(
        default=-1, description="wait this long for a run using the device; -1 = JRR_LOCK_TIMEOUT_S")

    @contextmanager
    def claim(self, owner: str, on_wait=None) -> Iterator[None]:
        """Exclusive use of this device across processes sharing JRR_HOME (waits, then fails clearly)."""
        from jrr_pipeline.resources.home import jrr_home
        from jrr_pipeline.resources.locks import exclusive

        device = self.torch_device()
        timeout = None if self.lock_timeout_s < 0 else self.lock_timeout_s
        with exclusive(jrr_home() / "locks" / f"device-{device}.lock", f"device {device}", timeout,
                       owner=owner, on_wait=on_wait):
            yield

    def apply_threads(self) -> None:
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
