"""Compute settings: device, dtype, threads and the number of training processes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
        if self.dtype != "auto":
            return self.dtype == "bf16"
        import torch

        if self.torch_device() == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_supports_bf16()

    def apply_threads(self) -> None:
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
