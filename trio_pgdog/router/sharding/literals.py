"""Constants and parameters in a statement's JSON parse tree, read as sharding-key values.

A value is a literal (with the casts written around it) or a parameter reference. It becomes a
key only where PostgreSQL would compare or store it as the key's type: ``42`` and ``'42'`` for a
bigint key, ``'abc'`` for a varchar key, ``'...'`` or ``'...'::uuid`` for a uuid key. A value
PostgreSQL would refuse to compare (``varchar_key = 5``: no such operator) or reject
(``bigint_key = 'abc'``) is not a key: the statement then goes wherever it would go without the
condition, and PostgreSQL reports the error.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .hashing import bytes_key_hash
from .values import BadKey, int_from_text, int_hash, uuid_from_text

__all__ = ["NO_MATCH", "NULL", "Value", "key_hash", "value_of"]

# Cast target names (the last part of a TypeCast's name) by what they make of a value.
_CATEGORIES = {
    **dict.fromkeys(("int2", "int4", "int8", "smallint", "integer", "int", "bigint"), "int"),
    **dict.fromkeys(("text", "varchar"), "text"),
    **dict.fromkeys(("numeric", "decimal"), "numeric"),
    "uuid": "uuid",
}
# The cast category a parameter compared with a key of each type may carry.
KEY_CATEGORY = {"bigint": "int", "varchar": "text", "uuid": "uuid"}

NULL = object()  # the key is NULL
NO_MATCH = object()  # compares unequal to every key (bigint_key = 4.5)

# (kind, payload): kind is "int" | "numeric" (text of the number) | "unknown" (an untyped
# string literal) | "text" | "uuid" (16 bytes) | "null" | "param" (0-based index) | "array"
# (an untyped string literal cast to an array of `payload[1]`) ; None: not a usable value.
Value = tuple[str, Any]


def _cast_names(type_name: dict[str, Any]) -> tuple[str, bool]:
    names = type_name.get("names", ())
    last = names[-1].get("String", {}).get("sval", "") if names else ""
    return last, bool(type_name.get("arrayBounds"))


def value_of(expr: dict[str, Any] | None) -> Value | None:
    """The value an expression stands for, casts applied; None if it is anything else."""
    casts: list[tuple[str, bool]] = []
    while expr is not None and "TypeCast" in expr:
        cast = expr["TypeCast"]
        casts.append(_cast_names(cast.get("typeName", {})))
        expr = cast.get("arg")
    if expr is None:
        return None
    if "ParamRef" in expr:
        number = expr["ParamRef"].get("number", 0)
        if number < 1:
            return None
        return _param_casts(number - 1, casts)
    const = expr.get("A_Const")
    if const is None:
        return None
    value = _constant(const)
    for name, is_array in reversed(casts):  # innermost first
        if value is None:
            return None
        if is_array:
            category = _CATEGORIES.get(name)
            if value[0] != "unknown" or category is None:
                return None
            value = ("array", (value[1], category))
            continue
        value = _cast(value, name)
    return value


def _param_casts(index: int, casts: list[tuple[str, bool]]) -> Value | None:
    # A parameter keeps its own bytes only if every cast around it is of one category
    # ($1::int4::int8); its element category if cast to an array type.
    categories = {(_CATEGORIES.get(name), is_array) for name, is_array in casts}
    if not categories:
        return ("param", (index, None, False))
    if len(categories) != 1:
        return None
    ((category, is_array),) = categories
    if category is None or category == "numeric":
        return None
    return ("param", (index, category, is_array))


def _constant(const: dict[str, Any]) -> Value | None:
    if const.get("isnull"):
        return ("null", None)
    if "ival" in const:
        return ("int", const["ival"].get("ival", 0))
    if "fval" in const:
        return ("numeric", const["fval"].get("fval", "0"))
    if "sval" in const:
        return ("unknown", const["sval"].get("sval", ""))
    return None  # booleans, bit strings


def _cast(value: Value, name: str) -> Value | None:
    kind, payload = value
    if kind == "null":
        return value
    category = _CATEGORIES.get(name)
    try:
        if category == "int":
            if kind == "int":
                return value
            if kind in ("unknown", "text"):
                return ("int", int_from_text(payload))
            if kind == "numeric":
                return ("int", _rounded(payload))
        elif category == "text":
            if kind in ("unknown", "text"):
                return ("text", payload)
            if kind == "int":
                return ("text", str(payload))
        elif category == "uuid":
            if kind in ("unknown", "text"):
                return ("uuid", uuid_from_text(payload))
            if kind == "uuid":
                return value
        elif category == "numeric":
            if kind == "int":
                return ("numeric", str(payload))
            if kind in ("unknown", "text", "numeric"):
                Decimal(payload.strip())
                return ("numeric", payload.strip())
    except (BadKey, InvalidOperation, ValueError):
        return None
    return None


def _rounded(text: str) -> int:
    # numeric to integer rounds half away from zero, as PostgreSQL does.
    return int(Decimal(text).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def key_hash(value: Value, data_type: str, *, assign: bool = False) -> int | object | None:
    """The row hash of a constant value as a key of `data_type`, compared with the key
    (``assign=False``: WHERE) or stored into it (``assign=True``: INSERT). NULL for a NULL,
    NO_MATCH when it equals no key, None when PostgreSQL would not compare or store it."""
    kind, payload = value
    if kind == "null":
        return NULL
    try:
        if data_type == "bigint":
            if kind == "int":
                return int_hash(payload)
            if kind == "unknown":
                return int_hash(int_from_text(payload))
            if kind == "numeric":
                number = Decimal(payload)
                if assign:
                    return int_hash(_rounded(payload))
                if number != number.to_integral_value():
                    return NO_MATCH
                return int_hash(int(number))
            return None
        if data_type == "varchar":
            if kind in ("unknown", "text"):
                return bytes_key_hash(payload.encode())
            if kind == "int" and assign:
                return bytes_key_hash(str(payload).encode())
            return None
        if kind == "unknown":
            return bytes_key_hash(uuid_from_text(payload))
        if kind == "uuid":
            return bytes_key_hash(payload)
    except (BadKey, InvalidOperation, ValueError):
        return None
    return None
