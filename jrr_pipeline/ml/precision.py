"""bf16 autocast: whether a device should use it, and the context that turns it on."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when /proc/cpuinfo advertises AMX-BF16 or AVX512-BF16 (fast bf16 matmuls)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def use_bf16(setting: str, device: torch.device) -> bool:
    """Resolve a bf16 setting ("auto" | "on" | "off", as TrainConfig.bf16) for ``device``."""
    if setting == "off":
        return False
    if setting == "on":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def autocast_dtype(bf16: bool) -> torch.dtype | None:
    """The autocast dtype for a bf16 decision: ``torch.bfloat16``, or None (no autocast)."""
    return torch.bfloat16 if bf16 else None


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
