"""Settings read from untrusted JSON: only known keys, only the types the dataclass declares.

A ``config.json`` comes from disk, perhaps from someone else's run. Before any of it
reaches a constructor, every key must be a field of the settings class and every value
must have the field's declared type; the class's own checks (``__post_init__``) then
judge the values. Every failure is one ``ValueError`` line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

Settings = TypeVar("Settings")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a field annotation (bool is not an int; an int is a float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (Sequence, tuple, list):
        item = typing.get_args(annotation)[0]
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    raise TypeError(f"no JSON check for the annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("collections.abc.", "").replace("<class '", "").replace(
        "'>", "")


def settings_from_json(cls: type[Settings], values: Any, where: str) -> Settings:
    """Build the settings dataclass ``cls`` from a parsed JSON object, checking keys and types first.

    ``where`` names the source in messages, e.g. ``"runs/a/config.json, section 'model'"``.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys are {', '.join(sorted(fields))}")
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ValueError(f"{where}: {key!r} must be {_type_name(hints[key])}, got {value!r}")
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
