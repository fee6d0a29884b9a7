"""A COPY statement's facts, read from its SQL text: which table and columns, which direction,
and the options that say how its data is written (format, delimiter, NULL string, quoting...).

The text is parsed with `pglast.parser.parse_sql_json` and the CopyStmt node is read as plain
dicts. Options are checked the way PostgreSQL checks them (same messages and SQLSTATEs) where a
wrong option would make the data unsplittable; the shards check the rest when they receive the
statement.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from pglast.parser import ParseError, parse_sql_json

from ...protocol.errors import FEATURE_NOT_SUPPORTED, INVALID_PARAMETER_VALUE, ProxyError

__all__ = ["CopySplitError", "CopyStatement", "normalize_encoding", "parse_copy"]

SYNTAX_ERROR = "42601"
FORMATS = ("text", "csv", "binary")
_TRUE = {"true", "on", "1", "t", "y", "yes"}
_FALSE = {"false", "off", "0", "f", "n", "no"}
# PostgreSQL names the encoding after dropping everything but letters and digits, in lower case.
_UTF8_NAMES = {"utf8", "unicode"}


class CopySplitError(ProxyError):
    """COPY data (or a COPY statement) that cannot be split across shards, reported to the client
    as PostgreSQL would report it: `sqlstate`, `message`, and where known the `context` line
    PostgreSQL adds (``COPY t, line 3, column k: "abc"``) and the input line number."""

    def __init__(self, sqlstate: str, message: str, *, line: int | None = None,
                 context: str | None = None, hint: str | None = None):
        super().__init__(sqlstate, message, hint=hint)
        self.line = line
        self.context = context


@attrs.frozen
class CopyStatement:
    """What a COPY statement says. `table` is None for ``COPY (query) TO``; `columns` is None
    when the statement names no column list (then the table's own column order applies)."""

    table: str | None
    schema: str | None
    columns: tuple[str, ...] | None
    is_from: bool
    stdio: bool  # FROM STDIN / TO STDOUT, rather than a server-side file or program
    format: str  # "text", "csv" or "binary"
    delimiter: str | None = None
    null: str | None = None
    default: str | None = None
    header: bool = False
    header_match: bool = False
    quote: str | None = None
    escape: str | None = None
    encoding: str | None = None
    force_not_null: tuple[str, ...] | bool = ()  # True: every column (FORCE_NOT_NULL *)
    force_null: tuple[str, ...] | bool = ()
    freeze: bool = False
    on_error: str | None = None
    has_where: bool = False


def parse_copy(sql: str) -> CopyStatement:
    """The facts of one COPY statement. ValueError if `sql` is not exactly one COPY statement;
    CopySplitError for options PostgreSQL would refuse."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError as exc:
        raise ValueError(f"not a valid statement: {exc}") from None
    stmts = tree.get("stmts", [])
    if len(stmts) != 1 or "CopyStmt" not in stmts[0].get("stmt", {}):
        raise ValueError("not a single COPY statement")
    node = stmts[0]["stmt"]["CopyStmt"]
    relation = node.get("relation")
    attlist = node.get("attlist")
    options = _read_options(node.get("options", []), is_from=bool(node.get("is_from")))
    return CopyStatement(
        table=relation["relname"] if relation else None,
        schema=relation.get("schemaname") if relation else None,
        columns=tuple(item["String"]["sval"] for item in attlist) if attlist else None,
        is_from=bool(node.get("is_from")),
        stdio="filename" not in node and not node.get("is_program"),
        has_where="whereClause" in node,
        **options,
    )


def normalize_encoding(name: str) -> str:
    """An encoding name as PostgreSQL compares them: 'UTF-8' and 'utf8' are both 'utf8'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def is_utf8(name: str) -> bool:
    return normalize_encoding(name) in _UTF8_NAMES


def _read_options(elems: list[dict[str, Any]], *, is_from: bool) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for elem in elems:
        d = elem["DefElem"]
        name, arg = d["defname"], d.get("arg")
        if name in seen:
            raise CopySplitError(SYNTAX_ERROR, "conflicting or redundant options")
        seen[name] = _option_value(name, arg, is_from)
    fmt = seen.pop("format", "text")
    opts: dict[str, Any] = {"format": fmt}
    header = seen.pop("header", False)
    opts["header"], opts["header_match"] = header is not False, header == "match"
    for name in ("delimiter", "null", "default", "quote", "escape", "encoding", "on_error"):
        opts[name] = seen.pop(name, None)
    opts["freeze"] = seen.pop("freeze", False)
    for name in ("force_not_null", "force_null"):
        opts[name] = seen.pop(name, ())
    seen.pop("force_quote", None)  # COPY TO only; nothing to split
    seen.pop("log_verbosity", None)
    if seen:
        raise CopySplitError(SYNTAX_ERROR, f'option "{next(iter(seen))}" not recognized')
    _check_options(opts)
    return opts


def _option_value(name: str, arg: dict[str, Any] | None, is_from: bool) -> Any:
    if name == "format":
        value = _string(name, arg).lower()
        if value not in FORMATS:
            raise CopySplitError(INVALID_PARAMETER_VALUE, f'COPY format "{value}" not recognized')
        return value
    if name in ("delimiter", "null", "default", "quote", "escape", "encoding", "on_error",
                "log_verbosity"):
        return _string(name, arg)
    if name == "header":
        return _header(arg, is_from)
    if name == "freeze":
        return _boolean(name, arg)
    if name in ("force_not_null", "force_null", "force_quote"):
        if arg is not None and "A_Star" in arg:
            return True
        if arg is None or "List" not in arg:
            raise CopySplitError(SYNTAX_ERROR, f'argument to option "{name}" must be a list of column names')
        return tuple(item["String"]["sval"] for item in arg["List"]["items"])
    raise CopySplitError(SYNTAX_ERROR, f'option "{name}" not recognized')


def _string(name: str, arg: dict[str, Any] | None) -> str:
    if arg is None:
        raise CopySplitError(SYNTAX_ERROR, f"{name} requires a parameter")
    if "String" in arg:
        return arg["String"].get("sval", "")
    if "Integer" in arg:
        return str(arg["Integer"].get("ival", 0))
    if "Boolean" in arg:
        return "true" if arg["Boolean"].get("boolval") else "false"
    raise CopySplitError(SYNTAX_ERROR, f"{name} requires a parameter")


def _boolean(name: str, arg: dict[str, Any] | None) -> bool:
    if arg is None:
        return True
    if "Integer" in arg and arg["Integer"].get("ival", 0) in (0, 1):
        return bool(arg["Integer"].get("ival", 0))
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval"))
    text = _string(name, arg).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CopySplitError(SYNTAX_ERROR, f"{name} requires a Boolean value")


def _header(arg: dict[str, Any] | None, is_from: bool) -> bool | str:
    if arg is not None and "String" in arg and arg["String"].get("sval", "").lower() == "match":
        if not is_from:
            raise CopySplitError(SYNTAX_ERROR, 'cannot use "match" with HEADER in COPY TO')
        return "match"
    try:
        return _boolean("header", arg)
    except CopySplitError:
        raise CopySplitError(SYNTAX_ERROR, "header requires a Boolean value or \"match\"") from None


def _check_options(o: dict[str, Any]) -> None:
    """PostgreSQL's checks (ProcessCopyOptions) that matter for reading the data."""
    csv, binary = o["format"] == "csv", o["format"] == "binary"
    if binary:
        for name in ("delimiter", "null", "default"):
            if o[name] is not None:
                raise CopySplitError(SYNTAX_ERROR, f"cannot specify {name.upper()} in BINARY mode")
        if o["header"]:
            raise CopySplitError(SYNTAX_ERROR, "cannot specify HEADER in BINARY mode")
    for name in ("quote", "escape"):
        if o[name] is not None and not csv:
            raise CopySplitError(FEATURE_NOT_SUPPORTED, f"COPY {name} available only in CSV mode")
    for name in ("force_not_null", "force_null"):
        if o[name] and not csv:
            raise CopySplitError(FEATURE_NOT_SUPPORTED,
                                 f"COPY {name} available only in CSV mode")
    if binary:
        return
    delim = o["delimiter"] if o["delimiter"] is not None else ("," if csv else "\t")
    null = o["null"] if o["null"] is not None else ("" if csv else "\\N")
    quote = o["quote"] if o["quote"] is not None else '"'
    if len(delim.encode()) != 1:
        raise CopySplitError(FEATURE_NOT_SUPPORTED, "COPY delimiter must be a single one-byte character")
    if delim in "\r\n":
        raise CopySplitError(INVALID_PARAMETER_VALUE, "COPY delimiter cannot be newline or carriage return")
    if "\r" in null or "\n" in null:
        raise CopySplitError(INVALID_PARAMETER_VALUE,
                             "COPY null representation cannot use newline or carriage return")
    if not csv and delim in "\\.abcdefghijklmnopqrstuvwxyz0123456789":
        raise CopySplitError(INVALID_PARAMETER_VALUE, f'COPY delimiter cannot be "{delim}"')
    if csv:
        for name in ("quote", "escape"):
            if o[name] is not None and len(o[name].encode()) != 1:
                raise CopySplitError(FEATURE_NOT_SUPPORTED,
                                     f"COPY {name} must be a single one-byte character")
        if delim == quote:
            raise CopySplitError(INVALID_PARAMETER_VALUE, "COPY delimiter and quote must be different")
        if quote in null:
            raise CopySplitError(INVALID_PARAMETER_VALUE,
                                 "CSV quote character must not appear in the NULL specification")
    if delim in null:
        raise CopySplitError(INVALID_PARAMETER_VALUE,
                             "COPY delimiter must not appear in the NULL specification")
