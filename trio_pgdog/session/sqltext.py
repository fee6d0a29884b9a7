"""SQL the proxy writes itself: quoting, and statements that make PostgreSQL raise an error.

Having the server raise an error the proxy chose (rather than answering the client
directly) keeps client and server in agreement: an open transaction is aborted on both."""

from __future__ import annotations


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def raise_sql(sqlstate: str, message: str, hint: str | None = None) -> str:
    """A statement that makes PostgreSQL itself report `message` with `sqlstate`."""
    using = f"ERRCODE = {quote_literal(sqlstate)}, MESSAGE = {quote_literal(message)}"
    if hint:
        using += f", HINT = {quote_literal(hint)}"
    return f"DO $pgdog$BEGIN RAISE EXCEPTION USING {using}; END$pgdog$"
