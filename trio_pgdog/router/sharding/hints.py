"""Manual routing: ``/* pgdog_shard: N */`` and ``/* pgdog_sharding_key: K */`` comments, and
``SET [LOCAL] pgdog.shard / pgdog.sharding_key`` statements (the session keeps their state).

Comments are found with pglast's scanner, like ``pgdog_role`` in classify.py, so a string
literal that merely contains the words routes nothing.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from pglast.parser import ParseError, scan

from .values import BadKey, int_from_text, text_hash

__all__ = ["CommentHints", "Setting", "comment_hints", "key_shard", "setting_of"]

_PRECHECK = re.compile(r"pgdog_shard", re.I)
_SHARD = re.compile(r"pgdog_shard\s*:\s*([^\s*/,;]+)", re.I)
_KEY = re.compile(r"""pgdog_sharding_key\s*:\s*('(?:[^']|'')*'|"(?:[^"]|"")*"|[^\s*/,;]+)""", re.I)
SETTINGS = {"pgdog.shard": "shard", "pgdog.sharding_key": "sharding_key"}


@attrs.frozen
class CommentHints:
    shard: str | None = None  # as written; checked by the caller, who knows the shard count
    key: str | None = None


@attrs.frozen
class Setting:
    """``SET [LOCAL] pgdog.shard TO 1``, ``SET pgdog.sharding_key TO 'k'``, ``RESET pgdog.shard``,
    ``SET ... TO DEFAULT`` or ``RESET ALL`` (name "all")."""

    name: str  # "shard" | "sharding_key" | "all"
    value: int | str | None  # None: back to no hint
    local: bool = False  # SET LOCAL: until the end of the transaction


def comment_hints(text: str) -> CommentHints | None:
    """The hints in the text's ``/* ... */`` comments (the first of each kind), or None."""
    if not _PRECHECK.search(text):
        return None
    try:
        spans = [text[tok.start : tok.end + 1] for tok in scan(text) if tok.name == "C_COMMENT"]
    except ParseError:
        spans = [text]  # not even lexable: PostgreSQL will say so wherever it goes
    shard = key = None
    for span in spans:
        if shard is None and (found := _SHARD.search(span)):
            shard = found.group(1)
        if key is None and (found := _KEY.search(span)):
            key = _unquote(found.group(1))
    if shard is None and key is None:
        return None
    return CommentHints(shard, key)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


def setting_of(node: dict[str, Any]) -> Setting | str | None:
    """The hint a VariableSetStmt sets or resets; None if it is about something else; a
    message if it sets a hint to something that cannot be one."""
    kind = node.get("kind")
    if kind == "VAR_RESET_ALL":
        return Setting("all", None)
    name = SETTINGS.get(node.get("name", ""))
    if name is None:
        return None
    local = bool(node.get("is_local"))
    if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
        return Setting(name, None, local)
    args = node.get("args", ())
    if kind != "VAR_SET_VALUE" or len(args) != 1 or "A_Const" not in args[0]:
        return f"pgdog.{name} takes one constant: SET pgdog.{name} TO ..."
    const = args[0]["A_Const"]
    if "ival" in const:
        value: str = str(const["ival"].get("ival", 0))
    elif "sval" in const:
        value = const["sval"].get("sval", "")
    elif "fval" in const:
        value = const["fval"].get("fval", "")
    else:
        return f"pgdog.{name} must be a number or a string"
    if name == "sharding_key":
        return Setting(name, value, local)
    try:
        return Setting(name, int_from_text(value), local)
    except BadKey:
        return f"pgdog.shard must be a shard number, got {value!r}"


def key_shard(key: str, data_type: str, shards: int) -> int:
    """The shard of a key given as text (a hint), read as `data_type`. Raises BadKey."""
    return text_hash(key.encode(), data_type) % shards
