"""Compute settings: device, dtype, threads and the number of training processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


class Compute(ConfigurableResource):
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda if present")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA or on CPUs with AMX/AVX512-BF16"
    )
    threads: int = Field(default=0, description="torch intra-op threads; 0 keeps torch's default")
    nproc: int = Field(default=1, description="training processes (>1 launches torchrun)")

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
