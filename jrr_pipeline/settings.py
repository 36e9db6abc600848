"""Presets, user settings and code versions over the typed stage settings (``ml.settings``).

Resolution, lowest to highest: a stage dataclass's defaults, the preset's table, the TOML file
named by ``$JRR_SETTINGS``, then ``--set STAGE.FIELD=VALUE``. ``resolve_settings`` builds and
validates every stage at once, so a bad value fails before any work starts; ``to_toml`` prints
the result in the format ``$JRR_SETTINGS`` reads (``jrr settings``).

Code versions hash what changes results: the resolved settings values and the code of the
modules an asset runs with docstrings, comments and help texts stripped, so a cosmetic edit
stales nothing while a changed statement or default stales that asset (and, once it has run,
what lies below it).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import math
import os
import tomllib
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

from jrr_pipeline.ml.settings import STAGES, Settings
from jrr_pipeline.ml.settings.base import did_you_mean, shown

PRESET_NAMES = ("ci", "cpu", "gpu")
UserSettings = dict[str, dict[str, Any]]

# Every value that differs from the stage dataclasses' defaults (jrr_pipeline/ml/settings/stages.py).
PRESETS: dict[str, UserSettings] = {
    # tiny and fast: the test suite's graph runs in about a minute
    "ci": {
        "qrels": {"dev_min_queries": 4},
        "bm25_negatives": {"top_k": 20},
        "warmup_retriever": {"max_steps": 2, "batch_size": 4, "lr": 3e-5, "n_negatives": 1,
                             "query_max_length": 16, "passage_max_length": 48,
                             "rank_window_end": 20},
        "warmup_reranker": {"max_steps": 2, "batch_size": 2, "n_negatives": 3, "max_length": 64,
                            "rank_window_end": 20},
        "dense_negatives": {"top_k": 20, "batch_size": 32},
        "denoised_candidates": {"top_k": 5, "list_length": 4},
        "joint_models": {"list_length": 4, "batch_size": 2, "max_steps": 2, "reranker_lr": 1e-4,
                         "passage_max_length": 48, "reranker_max_length": 64,
                         "index_passage_max_length": 0, "ar2_ranker_steps": 1,
                         "ar2_retriever_steps": 1, "ar2_refresh_top_k": 10,
                         "checkpoint_every": 1, "log_every": 1},
        "faiss_index": {"batch_size": 32},
        "evaluation_report": {"depth": 20, "rerank_depth": 10},
        "generation": {"rounds": 2, "documents_per_round": 6, "queries_per_document": 2,
                       "n_negatives": 1, "negative_depth": 10, "batch_size": 4,
                       "query_max_length": 16, "passage_max_length": 48,
                       "reranker_max_length": 64, "max_source_length": 64,
                       "final_documents": 30},
    },
    # a 2-core laptop runs SciFact end to end well inside an hour. Chosen on SciFact's dev split
    # (carved from train; docs/results.md): warm-up lr 3e-5 beat 2e-5 and 5e-5
    # (bench/select_defaults.py); SimANS negatives beat uniform, denoised, TAS-Balanced and the
    # negative cache by 0.02 for 1.2x the train time (bench/ablation_negatives.py); rerank depth
    # 20 / fusion 0.5 is the cheapest setting within 0.005 nDCG@10 of the dev best
    # (bench/rerank_settings.py); AR2's 200 retriever steps per phase beat 20, 50 and 100 on dev
    # (bench/select_defaults.py, docs/results.md "AR2 on dev, continued").
    "cpu": {
        "warmup_retriever": {"lr": 3e-5, "n_negatives": 3, "passage_max_length": 192,
                             "sampler": "simans"},
        "warmup_reranker": {"n_negatives": 3, "max_length": 128},
        "denoised_candidates": {"top_k": 10},
        "joint_models": {"list_length": 8, "reranker_lr": 1e-4, "passage_max_length": 192,
                         "reranker_max_length": 128, "ar2_ranker_steps": 10,
                         "ar2_retriever_steps": 200},
        "evaluation_report": {"rerank_depth": 20},
    },
    # paper-like list sizes and steps; measured once on an H200 through bench/gpu_stages.py
    # (docs/results.md "The GPU path": RocketQAv2 joint 0.7644 test / 0.7888 dev, lists of 8)
    "gpu": {
        "warmup_retriever": {"epochs": 3, "batch_size": 64, "lr": 3e-5},
        "warmup_reranker": {"epochs": 2, "batch_size": 16, "n_negatives": 15, "max_length": 320},
        "dense_negatives": {"batch_size": 256},
        "denoised_candidates": {"top_k": 50, "list_length": 32, "batch_size": 256},
        "joint_models": {"list_length": 32, "batch_size": 32, "epochs": 3, "retriever_lr": 2e-5,
                         "reranker_max_length": 320, "ar2_iterations": 4,
                         "ar2_ranker_steps": 100, "ar2_retriever_steps": 200,
                         "ar2_refresh_top_k": 100, "checkpoint_every": 50, "log_every": 10},
        "faiss_index": {"batch_size": 256},
        "evaluation_report": {"rerank_batch_size": 256},
        "generation": {"rounds": 20, "documents_per_round": 256, "batch_size": 64,
                       "passage_max_length": 256, "reranker_max_length": 320,
                       "final_documents": 0},
    },
}


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return name


def resolve_settings(preset: str, user: UserSettings | None = None,
                     source: str = "settings") -> dict[str, Settings]:
    """Every stage's settings: defaults < preset < ``user``; all validated here."""
    user = dict(user or {})
    unknown = sorted(set(user) - set(STAGES))
    if unknown:
        raise ValueError(f"{source}: unknown stage {shown(unknown[0])}"
                         f"{did_you_mean(unknown[0], list(STAGES))}")
    table = PRESETS[check_preset(preset)]
    resolved = {}
    for stage, cls in STAGES.items():
        values = {**table.get(stage, {}), **user.get(stage, {})}
        resolved[stage] = cls.from_dict({**cls.defaults(), **values},
                                        source if stage in user else f"preset {preset}")
    return resolved


def load_settings(path: str | Path | None = None) -> UserSettings:
    """User settings from a TOML file (``$JRR_SETTINGS`` when no path is given), a table per
    stage (``[warmup_reranker]`` / ``lr = 3e-5``); {} when neither is set."""
    path = path or os.environ.get("JRR_SETTINGS", "")
    if not path:
        return {}
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: settings file not found (JRR_SETTINGS)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the settings file (JRR_SETTINGS): "
                         f"{getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML (JRR_SETTINGS): {err}") from None
    for stage, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {shown(stage)} must be a table [{stage}] of field = "
                             f"value (JRR_SETTINGS)")
    return data


def parse_assignments(items: list[str]) -> UserSettings:
    """``['warmup_reranker.lr=3e-5', 'dataset.columns.doc_id=id']`` -> ``{'warmup_reranker':
    {'lr': 3e-05}, 'dataset': {'columns': {'doc_id': 'id'}}}``. A value is JSON (nan and inf
    too) unless the knob holds text; ``STAGE.FIELD.KEY`` sets one entry of a table knob."""
    settings: UserSettings = {}
    for item in items:
        key, sep, raw = item.partition("=")
        stage, _, rest = key.strip().partition(".")
        name, _, entry = rest.partition(".")
        if not (sep and stage and name):
            raise ValueError(f"--set {shown(item)}: expected STAGE.FIELD=VALUE, e.g. "
                             f"warmup_reranker.lr=3e-5 or dataset.columns.doc_id=id")
        kind = _knob_type(stage, name)
        if entry:
            if typing.get_origin(kind) is not dict:
                raise ValueError(f"--set {shown(item)}: {stage}.{name} is not a table; "
                                 f"STAGE.FIELD.KEY=VALUE sets an entry of a table setting")
            value = _parse_value(raw, typing.get_args(kind)[1])
            settings.setdefault(stage, {}).setdefault(name, {})[entry] = value
        else:
            settings.setdefault(stage, {})[name] = _parse_value(raw, kind)
    return settings


def _knob_type(stage: str, name: str) -> Any:
    """The annotation of ``STAGE.FIELD`` (None when unknown: validation names it later)."""
    cls = STAGES.get(stage)
    return typing.get_type_hints(cls).get(name) if cls else None


def _parse_value(raw: str, kind: Any) -> Any:
    """Text stays text for a text knob (a quoted JSON string is unquoted); else JSON."""
    texts = kind is str or (typing.get_origin(kind) is Literal
                            and all(isinstance(a, str) for a in typing.get_args(kind)))
    if texts and not (raw.startswith('"') and raw.endswith('"') and len(raw) > 1):
        return raw
    if raw.strip().lower() in _FLOAT_WORDS:
        return float(raw)
    try:
        return json.loads(raw)
    except ValueError:
        return raw


_FLOAT_WORDS = {"nan", "inf", "+inf", "-inf", "infinity", "-infinity"}


def merge_settings(*layers: UserSettings) -> UserSettings:
    """Later layers win, field by field; a table knob (``dataset.columns``) entry by entry."""
    merged: UserSettings = {}
    for layer in layers:
        for stage, values in layer.items():
            target = merged.setdefault(stage, {})
            for name, value in values.items():
                if isinstance(value, dict) and isinstance(target.get(name), dict):
                    value = {**target[name], **value}
                target[name] = value
    return merged


def user_settings(assignments: list[str], preset: str) -> UserSettings:
    """``$JRR_SETTINGS`` merged with ``--set`` assignments, each layer validated in turn, so a
    bad value fails at once, naming where it came from."""
    from_file = load_settings()
    if from_file:
        resolve_settings(preset, from_file, f"{os.environ['JRR_SETTINGS']} (JRR_SETTINGS)")
    merged = merge_settings(from_file, parse_assignments(assignments))
    resolve_settings(preset, merged, "--set")
    return merged


# ---------------------------------------------------------------------------------------- TOML
def to_toml(resolved: dict[str, Settings], preset: str, user: UserSettings | None = None) -> str:
    """The resolved settings as TOML, each knob with its help and where its value comes from."""
    user = user or {}
    lines = [f"# jrr settings, preset {preset!r}: defaults < preset < JRR_SETTINGS < --set",
             "# (a JRR_SETTINGS file holds any subset of these tables)"]
    for stage, settings in resolved.items():
        lines += ["", f"[{stage}]"]
        for f in type(settings).knobs():
            value = getattr(settings, f.name)
            origin = ("set" if f.name in user.get(stage, {}) else
                      preset if f.name in PRESETS[preset].get(stage, {}) else "")
            note = f.metadata.get("help", "") + (f" [{origin}]" if origin else "")
            lines.append(f"{f.name} = {toml_value(value)}  # {note}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


# ------------------------------------------------------------------------------- code versions
class _Cosmetics(ast.NodeTransformer):
    """Drops what cannot change a result: docstrings and help / description texts."""

    HELP_KEYWORDS = frozenset({"description", "help"})

    def _strip_docstring(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip_docstring

    def visit_keyword(self, node: ast.keyword):
        if node.arg in self.HELP_KEYWORDS:
            node.value = ast.Constant(None)
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name == "knob" and len(node.args) >= 2:  # knob(default, help, ...)
            node.args[1] = ast.Constant(None)
        return self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict):
        for i, key in enumerate(node.keys):
            if isinstance(key, ast.Constant) and key.value in self.HELP_KEYWORDS:
                node.values[i] = ast.Constant(None)
        return self.generic_visit(node)


def normalized_code(source: str) -> str:
    """The source's syntax tree without docstrings, comments, help texts or line numbers."""
    tree = _Cosmetics().visit(ast.parse(source))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def module_source(module: str) -> str:
    return inspect.getsource(importlib.import_module(module))


@cache
def module_code_hash(module: str) -> str:
    return hashlib.sha256(normalized_code(module_source(module)).encode()).hexdigest()


def code_version(settings: Settings | list[Settings] | None, *modules: str) -> str:
    """Hash of the settings' values (one stage's, or several) and of ``modules``' normalized
    code."""
    digest = hashlib.sha256()
    for module in sorted(set(modules)):
        digest.update(f"{module}:{module_code_hash(module)}\n".encode())
    for one in (settings if isinstance(settings, list) else [settings] if settings else []):
        digest.update(type(one).stage.encode())
        digest.update(json.dumps(one.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
