"""The fingerprint of one configured statement (the intercept hook matches statements by it;
the configuration checks its entries with it when it loads)."""

from __future__ import annotations

from pglast.parser import ParseError, fingerprint, split

__all__ = ["statement_fingerprint"]


def statement_fingerprint(query: str) -> str:
    """The fingerprint of one configured statement; ValueError when it is not exactly one."""
    try:
        statements = split(query)
    except ParseError as exc:
        raise ValueError(f"{query!r} is not valid SQL: {exc}") from None
    if len(statements) != 1:
        raise ValueError(f"{query!r} must be exactly one statement, found {len(statements)}")
    return fingerprint(query)
