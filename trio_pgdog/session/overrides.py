"""`SET pgdog.role TO 'primary' | 'replica' | 'auto'`: a session override answered by the proxy.

The statement never reaches a server (PostgreSQL would accept any `pgdog.*` setting, but
the proxy must know it). It is answered in whichever protocol the client used.
"""

from __future__ import annotations

from ..protocol import errors as codes
from ..protocol import extended as ext
from ..protocol import messages as m
from ..router.keywords import leading_keywords

ROLES = ("primary", "replica", "auto")
_SET_DONE = m.message(b"C", b"SET\x00")
_ANSWERS = {ord("P"): m.message(b"1"), ord("B"): m.message(b"2"), ord("D"): m.message(b"n")}


def _role_value(sql: bytes) -> str | None:
    """The value of a `SET pgdog.role ...` statement, '' if malformed; None if not one."""
    words = leading_keywords(sql, 2)
    if words != ["SET", "PGDOG.ROLE"]:
        return None
    upper = sql.upper()
    rest = sql[upper.index(b"PGDOG.ROLE") + len(b"PGDOG.ROLE"):].strip().rstrip(b";\x00 \t\n")
    for sep in (b"TO", b"to", b"To", b"="):
        if rest.startswith(sep):
            rest = rest[len(sep):].strip()
            break
    return rest.strip(b"'\"").decode("utf-8", "replace").lower()


def _check(kind: int, body: bytes) -> None:
    """A Bind or Describe the proxy answers itself must be well-formed (ProtocolError)."""
    if kind == ord("B"):
        ext.bind_statement(body)
    elif kind == ord("D"):
        ext.target(body, b"D")


def answer_role_set(data: bytes, status: bytes) -> tuple[bytes, str | None] | None:
    """If `data` is only `SET pgdog.role` statements (simple or unnamed extended protocol):
    (the reply, the new role or None when the value was invalid). Otherwise None."""
    messages = []
    pos = 0
    while pos < len(data):
        if pos + 5 > len(data):
            return None
        kind, length = data[pos], m.unpack_i32(data, pos + 1)
        nxt = pos + 1 + length
        if length < 4 or nxt > len(data):
            return None
        messages.append((kind, data[pos + 5 : nxt]))
        pos = nxt
    role: str | None = None
    seen_set = False
    out: list[bytes] = []
    failed = False
    for kind, body in messages:
        if kind in (ord("Q"), ord("P")):
            sql = body if kind == ord("Q") else body[1:] if body[:1] == b"\x00" else b""
            if _role_value(sql) is None:
                return None
            # Answered here, so read here: a malformed message is refused (ProtocolError).
            if kind == ord("Q"):
                ext.query_text(body)
            else:
                sql = ext.parse_name(body)[1]
                sql = sql[: sql.index(b"\x00")]
            value = _role_value(sql)
            if value is None:
                return None
            seen_set = True
            if value not in ROLES:
                failed = True
                out.append(m.error_response(
                    codes.INVALID_PARAMETER_VALUE,
                    f'invalid value for parameter "pgdog.role": "{value}"',
                    hint="use 'primary', 'replica' or 'auto'"))
                if kind == ord("Q"):
                    out.append(m.ready_for_query(status))
                continue
            role = value
            if kind == ord("Q"):
                out += [_SET_DONE, m.ready_for_query(status)]
            elif not failed:
                out.append(_ANSWERS[kind])
        elif kind in _ANSWERS and not failed:
            _check(kind, body)
            out.append(_ANSWERS[kind])
        elif kind == ord("E"):
            ext.execute_portal(body)
            if not failed:
                out.append(_SET_DONE)
        elif kind == ord("S"):
            out.append(m.ready_for_query(status))
            failed = False
        elif kind not in _ANSWERS and kind != ord("H"):
            return None
    if not seen_set:
        return None
    return b"".join(out), (None if failed and role is None else role)
