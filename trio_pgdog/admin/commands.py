"""Reading the admin console's commands: PgBouncer's words, case-insensitive, one or more
per Query separated by semicolons. Sans-IO: text in, Command objects (or AdminError) out."""

from __future__ import annotations

import re

import attrs

from ..protocol import errors as codes

SHOWS = ("POOLS", "STATS", "CLIENTS", "SERVERS", "DATABASES", "USERS", "CONFIG", "VERSION",
         "LISTS", "HOOKS", "PREPARED", "QUERY_CACHE")
# verb -> (fewest, most) words after it
ARITY = {"SHOW": (1, 1), "PAUSE": (0, 1), "RESUME": (0, 1), "RECONNECT": (0, 1),
         "RELOAD": (0, 0), "SHUTDOWN": (0, 0), "BAN": (1, 1), "UNBAN": (1, 1), "KILL": (1, 1),
         "KILL_CLIENT": (1, 1)}

_SET = re.compile(r"SET\s+(\w+)\s*(?:=|\s+TO\s+)\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r'"[^"]*"|\S+')


class AdminError(Exception):
    """A command the console refuses: SQLSTATE and message for the client."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@attrs.frozen
class Command:
    verb: str                   # SHOW, PAUSE, ..., SET
    args: tuple[str, ...] = ()  # SHOW: the upper-case topic; SET: (key, value)


def split_statements(sql: str) -> list[str]:
    """The statements of one Query, split on semicolons outside quotes; empty ones dropped."""
    out, start, quote = [], 0, ""
    for i, ch in enumerate(sql):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            out.append(sql[start:i])
            start = i + 1
    out.append(sql[start:])
    return [s.strip() for s in out if s.strip()]


def parse(statement: str) -> Command:
    """One statement as a Command; AdminError (42601 or 0A000) when it is not one."""
    words = _WORD.findall(statement)
    verb = words[0].upper()
    if verb == "SET":
        found = _SET.match(statement)
        if found is None:
            raise AdminError(codes.SYNTAX_ERROR, "SET needs a key and a value: SET key = value")
        return Command("SET", (found.group(1).lower(), _unquote(found.group(2))))
    if verb not in ARITY:
        raise AdminError(codes.SYNTAX_ERROR,
                         f"unknown admin command {words[0]!r}; the console knows SHOW "
                         f"{'|'.join(SHOWS)}, {', '.join(ARITY)} and SET key = value")
    args = tuple(_unquote(w) for w in words[1:])
    fewest, most = ARITY[verb]
    if not fewest <= len(args) <= most:
        wanted = "no argument" if most == 0 else \
            "one argument" if fewest == most else "at most one argument"
        raise AdminError(codes.SYNTAX_ERROR, f"{verb} takes {wanted}, got {len(args)}")
    if verb == "SHOW":
        topic = args[0].upper()
        if topic not in SHOWS:
            raise AdminError(codes.FEATURE_NOT_SUPPORTED,
                             f"SHOW {args[0]} is not known here; try SHOW {', SHOW '.join(SHOWS)}")
        args = (topic,)
    return Command(verb, args)


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        return word[1:-1]
    return word
