"""A strict cattrs converter, and the translation of its errors into problems.

cattrs' default hooks coerce (``int("5432")``, ``str(5)``, ``int(True)``), which
would hide mistakes in a config file, so every scalar hook here checks the TOML
type exactly. Containers check their shape before cattrs iterates them, so a
string is never taken for a list of characters.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import (
    AttributeValidationNote,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from .errors import InvalidValue

Path = tuple[str | int, ...]


class WrongType(ValueError):
    """A TOML value of the wrong type, e.g. a string where an integer belongs."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {describe(value)}")


def describe(value: Any) -> str:
    """Name a TOML value the way the file spells it, for error messages."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__


# --- scalar hooks: exact TOML types only ------------------------------------


def _structure_int(value: Any, _type: Any) -> int:
    # bool is a subclass of int in Python but not in TOML.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise WrongType("an integer", value)


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise WrongType("a number", value)


def _structure_str(value: Any, _type: Any) -> str:
    if isinstance(value, str):
        return value
    raise WrongType("a string", value)


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise WrongType("a boolean", value)


# --- container hooks: check the shape, then let cattrs do the work ----------

Factory = Callable[[Any, cattrs.Converter], Callable[[Any, Any], Any]]


def _shape_checked(factory: Factory, shape: type, expected: str) -> Factory:
    def make(type_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = factory(type_, converter)

        def structure(value: Any, t: Any) -> Any:
            if not isinstance(value, shape):
                raise WrongType(expected, value)
            return inner(value, t)

        return structure

    return make


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook_factory(
        attrs.has, _shape_checked(make_dict_structure_fn, dict, "a table")
    )
    converter.register_structure_hook_factory(
        _is_homogeneous_tuple, _shape_checked(homogenous_tuple_structure_factory, list, "an array")
    )
    converter.register_structure_hook_factory(
        lambda t: get_origin(t) is list, _shape_checked(list_structure_factory, list, "an array")
    )
    converter.register_structure_hook_factory(
        lambda t: get_origin(t) is dict, _shape_checked(mapping_structure_factory, dict, "a table")
    )
    return converter


# --- errors -----------------------------------------------------------------


@attrs.frozen
class Problem:
    """One thing wrong, at ``path`` (section, entry index, ..., key) inside one file."""

    path: Path
    kind: Literal["unknown", "missing", "value"]
    message: str = ""


def _step(exc: BaseException) -> Path:
    # cattrs records where a nested error happened as notes on the exception.
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return (note.name,)
        if isinstance(note, IterableValidationNote):
            return (note.index,)
    return ()


def problems_from(exc: BaseException, path: Path) -> Iterator[Problem]:
    """Flatten a (nested) cattrs validation error into problems with full paths."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield Problem((*path, key), "unknown")
    elif isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from problems_from(sub, (*path, *_step(sub)))
    elif isinstance(exc, InvalidValue):
        # Raised from __init__, so cattrs could not say which attribute.
        yield Problem((*path, exc.key), "value", exc.message)
    elif isinstance(exc, KeyError):
        # cattrs reports a missing required attribute as the KeyError of the dict lookup.
        yield Problem(path, "missing")
    else:
        yield Problem(path, "value", str(exc))
