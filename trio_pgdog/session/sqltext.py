"""SQL the proxy writes itself: quoting, and statements that make PostgreSQL raise an error.

Having the server raise an error the proxy chose (rather than answering the client
directly) keeps client and server in agreement: an open transaction is aborted on both.
Such errors carry a mark (their DATATYPE field) by which the proxy knows them on the way back
and takes out what is its own: the mark, and the CONTEXT line PL/pgSQL adds ("PL/pgSQL
function inline_code_block line 1 at RAISE"), an implementation detail clients should not see.
"""

from __future__ import annotations

from ..protocol import messages as m

MARK = "trio_pgdog"
MARK_FIELD = b"d" + MARK.encode() + b"\x00"
_OURS = frozenset(b"dW")  # the fields of a marked error the client does not see


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def raise_sql(sqlstate: str, message: str, hint: str | None = None) -> str:
    """A statement that makes PostgreSQL itself report `message` with `sqlstate`."""
    using = (f"ERRCODE = {quote_literal(sqlstate)}, MESSAGE = {quote_literal(message)}, "
             f"DATATYPE = {quote_literal(MARK)}")
    if hint:
        using += f", HINT = {quote_literal(hint)}"
    return f"DO $pgdog$BEGIN RAISE EXCEPTION USING {using}; END$pgdog$"


def unmarked(error: bytes) -> bytes:
    """A whole ErrorResponse message the proxy made PostgreSQL raise, without the fields that
    are the proxy's own (the mark, the PL/pgSQL CONTEXT)."""
    fields = [f for f in error[5:].split(b"\x00") if f and f[0] not in _OURS]
    return m.message(b"E", b"".join(f + b"\x00" for f in fields) + b"\x00")


def unmark_errors(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """`data` with the marked ErrorResponses at `spans` (start, end) made `unmarked`."""
    out, start = [], 0
    for pos, nxt in spans:
        out += [data[start:pos], unmarked(data[pos:nxt])]
        start = nxt
    out.append(data[start:])
    return b"".join(out)
