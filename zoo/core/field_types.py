"""Checks that every field of a config dataclass holds a value of its annotated type.

Values reach configs from the command line (`--set KEY=VALUE`, parsed as JSON when it parses),
from recipe and experiment files and from Python. A value of the wrong type would otherwise
travel until some comparison fails far away (`'<' not supported between 'str' and 'int'`);
checked where it enters, it is one line naming the field and the type it needs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from crossan.zoo.core.errors import ConfigError

__all__ = ["check_field_types", "describe_type", "matches_type"]


def check_field_types(config: Any) -> None:
    """Raise `ConfigError` for the first init field of dataclass `config` whose value does not
    match its annotation (`bool` is not an `int`; an `int` is a `float`)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if not field.init:
            continue
        value = getattr(config, field.name)
        expected = hints[field.name]
        if not matches_type(value, expected):
            raise ConfigError(f"{field.name} needs {describe_type(expected)}, got {value!r} ({type(value).__name__})")
        if _holds_non_finite(value):
            raise ConfigError(f"{field.name} needs finite numbers, got {value!r}")


def _holds_non_finite(value: Any) -> bool:
    """Whether `value` is, or contains (in tuples, lists, dict values), a NaN or an infinity:
    NaN passes every range check (`nan < 0` and `nan > 1` are both false)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return any(map(_holds_non_finite, value))
    if isinstance(value, dict):
        return any(map(_holds_non_finite, value.values()))
    return False


def matches_type(value: Any, expected: Any) -> bool:
    """Whether `value` is an instance of the annotation `expected` (unions, tuples, dicts)."""
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, option) for option in arguments)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return all(matches_type(item, arguments[0]) for item in value)
        return len(value) == len(arguments) and all(map(matches_type, value, arguments))
    if origin is dict:
        return isinstance(value, dict) and all(
            matches_type(key, arguments[0]) and matches_type(item, arguments[1]) for key, item in value.items()
        )
    if expected is Path:
        return isinstance(value, Path)
    return isinstance(value, origin or expected)


def describe_type(expected: Any) -> str:
    """The annotation in words: `an integer`, `a number or null`, `a list of strings`."""
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        Path: "a path",
        Any: "any value",
    }
    if expected in names:
        return names[expected]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(option) for option in arguments)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return f"a list of {_plural(describe_type(arguments[0]))}"
        return f"a list of {len(arguments)}: " + ", ".join(describe_type(option) for option in arguments)
    if origin is dict:
        return f"an object of {_plural(describe_type(arguments[1]))}"
    return getattr(expected, "__name__", str(expected))


def _plural(description: str) -> str:
    """`an integer` -> `integers`, `a string` -> `strings`, other words as they are."""
    for article in ("an ", "a "):
        if description.startswith(article):
            return description[len(article) :] + "s"
    return description
