"""Authenticating the proxy to PostgreSQL with whatever method the server asks for."""

from __future__ import annotations

import scramp

from ..netio import Conn
from ..protocol import ProxyError, ServerError
from ..protocol import errors as codes
from ..protocol import messages as m
from .client import md5_password


def _need_password(user: str, password: str | None) -> str:
    if password is None:
        raise ProxyError(codes.INVALID_AUTHORIZATION,
                         f'server asked for a password for user "{user}" and none is configured '
                         "(set password or server_password in users.toml)")
    return password


async def authenticate(conn: Conn, user: str, password: str | None) -> None:
    """Answer the server's authentication requests until AuthenticationOk."""
    scram: scramp.ScramClient | None = None
    while True:
        kind, body = await conn.read_message()
        if kind == b"E":
            raise ServerError(m.parse_error_fields(body))
        if kind != b"R":
            raise ProxyError(codes.PROTOCOL_VIOLATION,
                             f"server sent message type {kind!r} during authentication")
        code, payload = m.parse_auth(body)
        if code == m.AUTH_OK:
            return
        if code == m.AUTH_CLEARTEXT:
            await conn.send(m.password_message(_need_password(user, password).encode() + b"\x00"))
        elif code == m.AUTH_MD5:
            digest = md5_password(user, _need_password(user, password), payload[:4])
            await conn.send(m.password_message(digest + b"\x00"))
        elif code == m.AUTH_SASL:
            mechanisms = m.parse_cstrings(payload)
            if "SCRAM-SHA-256" not in mechanisms:
                raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                                 f"server offered unsupported SASL mechanisms {mechanisms}")
            scram = scramp.ScramClient(["SCRAM-SHA-256"], user, _need_password(user, password))
            first = scram.get_client_first().encode()
            await conn.send(m.sasl_initial_response("SCRAM-SHA-256", first))
        elif code == m.AUTH_SASL_CONTINUE and scram is not None:
            scram.set_server_first(payload.decode())
            await conn.send(m.password_message(scram.get_client_final().encode()))
        elif code == m.AUTH_SASL_FINAL and scram is not None:
            try:
                scram.set_server_final(payload.decode())
            except scramp.ScramException as exc:
                raise ProxyError(codes.INVALID_AUTHORIZATION,
                                 f"server failed SCRAM verification: {exc}") from None
        else:
            raise ProxyError(codes.FEATURE_NOT_SUPPORTED,
                             f"server requested unsupported authentication method {code}")
