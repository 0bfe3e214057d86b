"""Settings written once, on dataclass fields; the CLI flags and the ``config.json`` checks follow from them.

A field's annotation is its type (``Literal[...]`` for a choice), its default the default; :func:`setting` adds its
help and marks. :func:`add_arguments` makes a flag per field, :func:`from_args` reads them, :func:`settings_from_json`
an untrusted ``config.json`` section. Messages and help texts speak Python: a setting by its Python name (``z_dim``),
a bad value as a :class:`SettingError` naming it, a suggestion as ``name=value`` (``resume=True``, ``data_dir=DIR``;
``without resume=True`` for a switch off); :func:`in_flags` writes them as the CLI's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar, get_args

import torch

Settings = TypeVar("Settings")


class SettingError(ValueError):
    """A bad value of ``setting`` (a Python name); ``settings`` adds the ``others`` the message names as remedies."""

    def __init__(self, setting: str, message: str, others: Collection[str] = ()):
        super().__init__(message)
        self.setting = setting
        self.settings = (setting, *others)


Mark = Literal["from_data", "resumable"]
"""``from_data``: no flag, the value is the data's; ``resumable``: the flag may change a resumed run's value."""


def setting(default: Any, help: str, metavar: str | None = None, *, from_data: bool = False,
            resumable: bool = False) -> Any:
    """A settings field with its default, its help text (also the flag's), the flag's metavar and its marks."""
    return dataclasses.field(default=default, metadata={"help": help, "metavar": metavar, "from_data": from_data,
                                                        "resumable": resumable})


def marked(cls: type, mark: Mark) -> tuple[str, ...]:
    """The names of the fields of the settings class ``cls`` declared with ``setting(..., mark=True)``."""
    return tuple(field.name for field in dataclasses.fields(cls) if field.metadata.get(mark))


def flag(name: str) -> str:
    """The flag a setting gets: ``z_dim`` -> ``--z-dim``."""
    return "--" + name.replace("_", "-")


_type_hints = functools.cache(typing.get_type_hints)  # a settings class's annotations, read by every __post_init__


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _without_none(annotation: Any) -> Any:
    """``X`` for ``X | None``, else the annotation itself."""
    if _is_union(annotation):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` or ``Literal[...] | None`` annotation allows (``None`` for other annotations)."""
    literal = _without_none(annotation)
    if typing.get_origin(literal) is not Literal:
        return None
    optional = (None,) if literal is not annotation else ()
    return (*typing.get_args(literal), *optional)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise :class:`SettingError` unless ``value`` is one of ``choices``, suggesting the closest name."""
    if value not in choices:
        names = [str(choice) for choice in choices if choice is not None]
        raise SettingError(name, f"unknown {name} {value!r}; choose one of {', '.join(names)}{guess(value, names)}")


def guess(value: Any, names: Collection[str]) -> str:
    """``"; did you mean 'NAME'?"`` for the one of ``names`` closest to a mistyped ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a value has a field's type: bool is not an int, an int is a float, a sequence is a list or tuple of
    its items."""
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if annotation in (int, float):
        return isinstance(value, (int, annotation)) and not isinstance(value, bool)
    if origin in (Sequence, tuple, list):
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    raise TypeError(f"no type check for the annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    """How a message names a field's type: ``int``, ``str | None``, ``tuple of int``."""
    if _is_union(annotation):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (Sequence, tuple, list):
        return f"tuple of {_type_name(typing.get_args(annotation)[0])}"
    return "None" if annotation is type(None) else annotation.__name__


INT64 = 2**63
"""An int setting lies in [-INT64, INT64), as torch's and numpy's 64-bit integers."""


def check_choices(settings: Any) -> None:
    """Check every field of the settings dataclass instance ``settings`` against its annotation, first thing in
    ``__post_init__``: a ``Literal`` holds one of its choices, any other field a value of its type (bool is not an
    int, an int is a float, a tuple may be a list), a float is finite and an int fits in 64 bits, so that no value
    reaches torch that it cannot take."""
    for name, annotation in _type_hints(type(settings)).items():
        value, choices = getattr(settings, name), _choices_of(annotation)
        if choices is not None:
            check_choice(name, value, choices)
        elif not _matches(value, annotation):
            kind = _without_none(annotation)
            single = typing.get_origin(kind) in (Sequence, tuple, list) and _matches(value, get_args(kind)[0])
            fix = f"; write {name}=({value!r},)" if single else ""
            raise SettingError(name, f"{name} must be {_type_name(annotation)}, got {value!r}{fix}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise SettingError(name, f"{name} must be a finite number, got {value}")
        elif isinstance(value, int) and not -INT64 <= value < INT64:
            raise SettingError(name, f"{name}={value} does not fit in a 64-bit integer; choose a smaller {name}")


def check_positive(settings: Any, *names: str) -> None:
    """Raise :class:`SettingError` for the first of ``names`` that is set on ``settings`` and not positive."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and not value > 0:  # also refuses NaN
            raise SettingError(name, f"{name} must be positive, got {value}")


# --- the CLI ----------------------------------------------------------------------------------------

class ArgumentContainer(Protocol):
    """Where :func:`add_arguments` adds flags: an ``argparse.ArgumentParser`` or one of its argument groups."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def _argument(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field: type, choices or nargs from the annotation; default and help."""
    if not field.metadata.get("help"):
        raise TypeError(f"{field.name} has no help text; declare it with pyrovae.settings.setting()")
    options = {"dest": field.name, "default": field.default, "help": field.metadata["help"]}
    if field.metadata.get("metavar"):
        options["metavar"] = field.metadata["metavar"]
    kind = _without_none(annotation)
    if kind is bool and field.default is None:  # unset: a default that depends on other settings
        return {**options, "action": argparse.BooleanOptionalAction}
    if kind is bool and field.default is False:
        return {**options, "action": "store_true"}
    if typing.get_origin(kind) is Literal:
        return {**options, "choices": typing.get_args(kind)}
    if typing.get_origin(kind) in (Sequence, tuple, list):
        return {**options, "type": typing.get_args(kind)[0], "nargs": "+"}
    if kind in (int, float, str):
        return {**options, "type": kind}
    raise TypeError(f"no flag for {field.name}: {annotation!r} = {field.default!r}; write the flag by hand")


def _with_default(options: dict[str, Any]) -> dict[str, Any]:
    """The options with the flag's default added to its help, unless it is a switch, unset or said in the help."""
    default, help = options["default"], options["help"]
    if default is None or "action" in options or "(default" in help:
        return options
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return {**options, "help": f"{help} (default: {shown})"}


def add_arguments(group: ArgumentContainer, cls: type, skip: Collection[str] = (),
                  **changes: dict[str, Any]) -> dict[str, argparse.Action]:
    """Add a flag to ``group`` for every field of ``cls`` but those in ``skip`` and those marked ``from_data``, with
    ``changes`` (``add_argument`` keywords by field name) replacing the generated keywords; return the actions."""
    hints, actions = _type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if field.name not in skip and not field.metadata.get("from_data"):
            options = _with_default({**_argument(field, hints[field.name]), **changes.get(field.name, {})})
            actions[field.name] = group.add_argument(flag(field.name), **options)
    return actions


def help_text(cls: type, name: str) -> str:
    """The help text of the field ``name`` of the settings class ``cls``."""
    return next(field for field in dataclasses.fields(cls) if field.name == name).metadata["help"]


def from_args(cls: type[Settings], args: argparse.Namespace, **values: Any) -> Settings:
    """The settings class ``cls`` from parsed flags (one attribute per field), ``values`` overriding them."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)
             if field.name not in values and hasattr(args, field.name)}
    return cls(**given, **values)


SUGGESTION = re.compile(r"(?<![\w./-])(?P<name>[a-z]\w*)=(?P<value>'[^']*'|\"[^\"]*\"|[\w.+-]*\w)")
"""``name=value`` in a message; not inside a path (``runs/lr=0.1``)."""


def in_flags(text: str, flags: Mapping[str, argparse.Action], settings: Collection[str] = ()) -> str:
    """``text`` with ``name=value`` suggestions written as flags, and the ``settings`` a :class:`SettingError`
    names wherever they stand alone; ``flags`` maps a Python name to its flag's action."""
    def option(name: str) -> str:
        return max(flags[name].option_strings, key=len)

    def suggestion(match: re.Match) -> str:
        action = flags.get(match["name"])
        if action is None:
            return match[0]
        if action.nargs == 0:  # a switch: only the value it sets can be written as the flag
            return option(match["name"]) if match["value"] == repr(action.const) else match[0]
        value = match["value"].strip("'\"")
        return f"{option(match['name'])} {value}"

    text = SUGGESTION.sub(suggestion, text)
    for setting in settings:
        if setting in flags:
            text = re.sub(rf"(?<![\w./'\"-]){re.escape(setting)}(?![\w/'\"=-]|\.\w)", option(setting), text)
    return text


# --- config.json ------------------------------------------------------------------------------------

def settings_from_json(cls: type[Settings], values: Any, where: str) -> Settings:
    """``cls`` from a parsed JSON object, perhaps someone else's: its keys are checked, then the class checks the
    values. Every failure is one ``ValueError`` line starting with ``where``, e.g. ``"runs/a/config.json, ..."``."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object of settings, got {type(values).__name__}")
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known keys are {', '.join(sorted(fields))}")
    try:
        return cls(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


COLUMN_TYPES = ("real", "positive", "count", "binary", "categorical")
"""The types of a table's columns (the data layer reads them, the model scores them), in the order of the model's
sites: real (Normal), positive (LogNormal), count (Poisson), binary (Bernoulli), categorical (Categorical)."""
Device = Literal["auto", "cpu", "cuda"]
DEVICES = get_args(Device)
DEVICE_HELP = "auto picks CUDA when there is a GPU"


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without one is an error."""
    check_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but PyTorch sees no CUDA GPU; use device='cpu' or "
                         "device='auto'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
