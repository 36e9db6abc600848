"""Typed, validated settings: ``knob()`` fields on frozen dataclasses, checked on construction.

Every setting of the pipeline is a *knob*: a dataclass field with one default, one help text and
optional bounds. ``Settings.__post_init__`` checks types (``Literal`` choices included) and bounds,
so a bad value fails where it is made, naming ``STAGE.FIELD``, the value and what is allowed. The
same class is built by the Dagster ``Config`` at the edge, written to a run's JSON with
``to_dict`` and read back with ``from_dict`` by the training entry point.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

_BOUNDS = ("ge", "gt", "le", "lt")
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
MAX_SHOWN = 80  # characters of a bad value echoed in an error


def knob(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None) -> Any:
    """A settings field: its default, what it does, and optional numeric bounds."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def shown(value: Any) -> str:
    """``repr(value)``, cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean 'lr'?)`` for a near miss, else `` (known: a, b, ...)``."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1) or [
        k for k in known if k.startswith(name) or name.startswith(k)]
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) and args:
        return f"a list of {type_name(args[0]).removeprefix('one of ')}"
    if origin is dict and args:
        return f"a table of {type_name(args[0])} = {type_name(args[1])}"
    return getattr(annotation, "__name__", None) or str(annotation)


def type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (int is not bool; an int is a valid float)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (inner,) = typing.get_args(annotation)[:1] or (Any,)
        return isinstance(value, list | tuple) and all(type_ok(v, inner) for v in value)
    if origin is dict:
        key, inner = typing.get_args(annotation) or (Any, Any)
        return isinstance(value, dict) and all(
            type_ok(k, key) and type_ok(v, inner) for k, v in value.items())
    if annotation is Any:
        return True
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass; ``stage`` names it in errors (``STAGE.FIELD``)."""

    stage: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not type_ok(value, hints[f.name]):
                raise ValueError(f"{self.stage}.{f.name} = {shown(value)}: expected "
                                 f"{type_name(hints[f.name])}")
            if hints[f.name] is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))  # 1 -> 1.0, as TOML/JSON may write it
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{self.stage}.{f.name} = {shown(value)}: must be a finite number")
            for bound, limit in f.metadata.get("bounds", {}).items():
                ok = {"ge": value >= limit, "gt": value > limit, "le": value <= limit,
                      "lt": value < limit}[bound]
                if not ok:
                    raise ValueError(f"{self.stage}.{f.name} = {shown(value)}: must be "
                                     f"{_BOUND_TEXT[bound]} {limit}")
        self.check()

    def check(self) -> None:
        """Checks across fields (override); raise ValueError naming ``STAGE.FIELD``."""

    @classmethod
    def knobs(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Field -> default of the class (no preset applied)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable field -> value."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> Settings:
        """Build from a mapping; unknown fields and bad values raise ValueError naming
        ``source`` (e.g. a file) and ``STAGE.FIELD``."""
        prefix = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise ValueError(f"{prefix}{cls.stage}: expected a table of field = value, got "
                             f"{shown(data)}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{prefix}{cls.stage}.{unknown[0]}: unknown setting"
                             f"{did_you_mean(unknown[0], names)}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{prefix}{err}") from None
