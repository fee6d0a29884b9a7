"""The client's side of connection startup: the startup packet and its negotiation."""

from __future__ import annotations

import attrs

from ..netio import Conn, ConnectionClosed
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m


@attrs.frozen
class Startup:
    """A StartupMessage: who the client is and what it asked for."""

    params: dict[str, str]

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params.get("database") or self.params["user"]


@attrs.frozen
class Cancel:
    """A CancelRequest: the BackendKeyData the client was given."""

    pid: int
    secret: int


class StartTls:
    """An SSLRequest the proxy will answer with S: the TLS handshake comes next."""


START_TLS = StartTls()


def _violation(text: str) -> ProxyError:
    return ProxyError(codes.PROTOCOL_VIOLATION, text, fatal=True)


async def read_startup(conn: Conn, offer_tls: bool = False) -> Startup | Cancel | StartTls:
    """Read packets until a StartupMessage or CancelRequest; an SSLRequest on a plain
    connection is START_TLS when `offer_tls` (the caller answers it), GSSAPI and any other
    encryption request are declined."""
    while True:
        body = await _read_packet(conn)
        length = len(body) + 4
        code = m.unpack_i32(body)
        if code in (m.SSL_REQUEST, m.GSSENC_REQUEST):
            if conn.buffered:  # bytes after the request could be a TLS injection attempt
                raise _violation("received unencrypted data after SSL or GSSAPI request")
            if code == m.SSL_REQUEST and offer_tls and not conn.tls:
                return START_TLS
            await conn.send(b"N")
            continue
        if code == m.CANCEL_REQUEST:
            if length != 16:
                raise _violation("invalid length of cancel request packet")
            return Cancel(m.unpack_i32(body, 4), m.unpack_i32(body, 8))
        return await _startup_message(conn, code, body[4:])


async def _read_packet(conn: Conn) -> bytes:
    """One length-prefixed packet, without its length word.

    A client that closes before sending anything is not worth a word (port probes and
    health checks do that); one that closes inside a packet is reported, as PostgreSQL does.
    """
    try:
        length = m.unpack_i32(await conn.read_exactly(4))
    except ConnectionClosed:
        if conn.buffered:
            raise _violation("incomplete startup packet") from None
        raise
    if length < 8 or length > m.MAX_STARTUP_LENGTH:
        raise _violation(f"invalid length of startup packet ({length} bytes)")
    try:
        return await conn.read_exactly(length - 4)
    except ConnectionClosed:
        raise _violation(f"incomplete startup packet (the client closed the connection "
                         f"inside a {length}-byte packet)") from None


async def _startup_message(conn: Conn, version: int, payload: bytes) -> Startup:
    major, minor = version >> 16, version & 0xFFFF
    if major != 3:
        raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                         f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
                         fatal=True)
    try:
        params = m.parse_startup_params(payload)
    except ValueError as exc:
        raise _violation(f"invalid startup packet layout: {exc}") from None
    options = [k for k in params if k.startswith("_pq_.")]
    if minor > 0 or options:
        # Protocol 3.x with x > 0, or protocol options: tell the client we speak 3.0 only.
        await conn.send(m.negotiate_protocol_version(0, options))
        for k in options:
            del params[k]
    if not params.get("user"):
        raise ProxyError(codes.INVALID_AUTHORIZATION,
                         "no PostgreSQL user name specified in startup packet", fatal=True)
    if "replication" in params and params["replication"].lower() not in ("false", "off", "no", "0"):
        raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                         "replication connections are not supported by trio_pgdog; connect to "
                         "PostgreSQL directly", fatal=True)
    return Startup(params)
