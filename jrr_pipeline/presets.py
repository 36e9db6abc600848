"""Named presets (``ci``, ``cpu``, ``gpu``): default values for each asset's Config.

A preset only sets defaults. The Config classes' own defaults are the ``cpu`` preset; ``ci`` makes
everything tiny and fast for tests; ``gpu`` uses paper-like sizes. Any field can still be overridden
in Dagster run config, and a preset's values are part of each asset's code version, so switching
presets marks exactly the assets whose settings changed as stale.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

import pydantic
from dagster import Config

PRESET_NAMES = ("ci", "cpu", "gpu")

# asset name -> field -> value; fields left out keep the Config class default (the cpu preset).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "bm25_negatives": {"top_k": 20},
        "warmup_retriever": {"max_steps": 2, "batch_size": 4, "n_negatives": 1,
                             "query_max_length": 16, "passage_max_length": 48, "rank_window_end": 20},
        "warmup_reranker": {"max_steps": 2, "batch_size": 2, "n_negatives": 3, "max_length": 64,
                            "rank_window_end": 20},
        "dense_negatives": {"top_k": 20, "batch_size": 32},
        "denoised_candidates": {"top_k": 5, "list_length": 4},
        "joint_models": {"list_length": 4, "batch_size": 2, "max_steps": 2, "passage_max_length": 48,
                         "reranker_max_length": 64, "index_passage_max_length": 0,
                         "ar2_iterations": 2, "ar2_ranker_steps": 1, "ar2_retriever_steps": 1,
                         "ar2_refresh_top_k": 10, "checkpoint_every": 1, "log_every": 1},
        "faiss_index": {"batch_size": 32},
        "evaluation_report": {"depth": 20, "rerank_depth": 10},
    },
    "cpu": {},
    "gpu": {
        "warmup_retriever": {"epochs": 3, "batch_size": 64, "n_negatives": 7,
                             "passage_max_length": 256, "lr": 3e-5},
        "warmup_reranker": {"epochs": 2, "batch_size": 16, "n_negatives": 15, "max_length": 320},
        "dense_negatives": {"batch_size": 256},
        "denoised_candidates": {"top_k": 50, "list_length": 32, "batch_size": 256},
        "joint_models": {"list_length": 32, "batch_size": 32, "epochs": 3, "max_steps": 0,
                         "retriever_lr": 2e-5, "reranker_lr": 3e-5,
                         "passage_max_length": 256,
                         "reranker_max_length": 320, "ar2_iterations": 4, "ar2_ranker_steps": 100,
                         "ar2_retriever_steps": 200, "ar2_refresh_top_k": 100,
                         "checkpoint_every": 50, "log_every": 10},
        "faiss_index": {"batch_size": 256},
        "evaluation_report": {"rerank_depth": 100, "rerank_batch_size": 256},
    },
}


# (settings, names of the assets that asked for their config while they were applied)
_active_settings: ContextVar[tuple[dict[str, dict[str, Any]], set[str]] | None] = ContextVar(
    "jrr_settings", default=None)


@contextmanager
def settings_applied(settings: dict[str, dict[str, Any]] | None) -> Iterator[None]:
    """Apply user settings (asset -> field -> value) on top of the preset while assets are built.

    Settings become the Config defaults and so part of each asset's code version: changing one
    reranker setting marks exactly ``warmup_reranker`` and what lies downstream of it stale.
    """
    settings = dict(settings or {})
    configured: set[str] = set()
    token = _active_settings.set((settings, configured))
    try:
        yield
    finally:
        _active_settings.reset(token)
    unknown = set(settings) - configured
    if unknown:
        raise ValueError(f"settings: unknown asset {', '.join(sorted(unknown))}; configurable: "
                         f"{', '.join(sorted(configured))}")


def load_settings(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Settings from a TOML file (``$JRR_SETTINGS`` when no path is given), one table per asset::

        [warmup_reranker]
        lr = 3e-5
    """
    path = path or os.environ.get("JRR_SETTINGS", "")
    if not path:
        return {}
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: settings file not found (JRR_SETTINGS)") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    for asset, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {asset!r} must be a table [{asset}] of field = value")
    return data


def parse_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """``['warmup_reranker.lr=3e-5']`` -> ``{'warmup_reranker': {'lr': 3e-05}}`` (JSON values, else text)."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        asset, dot, name = key.strip().partition(".")
        if not (sep and dot and asset and name):
            raise ValueError(f"--set {item!r}: expected ASSET.FIELD=VALUE, e.g. warmup_reranker.lr=3e-5")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        settings.setdefault(asset, {})[name] = value
    return settings


def merge_settings(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for asset, values in layer.items():
            merged.setdefault(asset, {}).update(values)
    return merged


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return name


def preset_config(cls: type[Config], asset: str, preset: str) -> type[Config]:
    """``cls`` with the preset's defaults for ``asset`` (a subclass; same fields and help texts)."""
    active = _active_settings.get()
    user = {}
    if active is not None:
        active[1].add(asset)
        user = active[0].get(asset, {})
    values = {**PRESETS[check_preset(preset)].get(asset, {}), **user}
    if not values:
        return cls
    unknown = set(values) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"preset {preset!r} or settings set unknown fields of {asset}: {sorted(unknown)}")
    fields: dict[str, Any] = {}
    for key, value in values.items():
        info = cls.model_fields[key]
        try:
            value = pydantic.TypeAdapter(info.annotation).validate_python(value)
        except pydantic.ValidationError as err:
            raise ValueError(f"{asset}.{key} = {value!r}: {err.errors()[0]['msg']}") from None
        fields[key] = (info.annotation, pydantic.Field(default=value, description=info.description))
    return pydantic.create_model(cls.__name__, __base__=cls, **fields)


def config_defaults(cls: type[Config]) -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in cls.model_fields.items()}


@cache
def _module_source_hash(module: str) -> str:
    return hashlib.sha256(inspect.getsource(importlib.import_module(module)).encode()).hexdigest()


def code_version(config_cls: type[Config] | None, *modules: str) -> str:
    """A code version derived from the source of ``modules`` and the config schema + defaults.

    Editing any of those modules, or changing a default (for example by switching preset), gives a
    new version, so Dagster marks the asset and everything downstream stale.
    """
    digest = hashlib.sha256()
    for module in sorted(modules):
        digest.update(module.encode())
        digest.update(_module_source_hash(module).encode())
    if config_cls is not None:
        schema = config_cls.model_json_schema()
        digest.update(json.dumps(schema, sort_keys=True, default=str).encode())
        digest.update(json.dumps(config_defaults(config_cls), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
