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


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``'s type: scores, softmaxes and KLs run in fp32 inside it.

    Under bf16 autocast even ``a.float() @ b.float().T`` runs in bf16; with a temperature of
    0.05 the logits reach ~20, where one bf16 step is 0.06-0.125. Callers ``.float()`` their
    inputs inside this block."""
    kind = torch.device(device).type
    return torch.autocast(device_type=kind, enabled=False)


def score_matrix(q: torch.Tensor, p: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * q @ p.T`` in fp32, whatever autocast is active: [Q, H] x [P, H] -> [Q, P]."""
    with full_precision(q.device):
        return (q.float() @ p.float().T) * scale
