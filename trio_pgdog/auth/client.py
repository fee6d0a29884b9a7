"""Authenticating clients against users.toml: SCRAM-SHA-256 (default), md5 or trust."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os

import scramp

from ..netio import Conn
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from .scram import ScramError, ScramServer

SCRAM = "SCRAM-SHA-256"
METHODS = ("scram", "md5", "trust")


@functools.lru_cache(maxsize=4096)
def _scram_auth_info(password: str) -> tuple:
    # PBKDF2 with 4096 rounds costs milliseconds: derive once per password, not per login.
    return scramp.ScramMechanism(SCRAM).make_auth_info(password, iteration_count=4096)


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's md5 scheme: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def _failed(user: str) -> ProxyError:
    return ProxyError(codes.INVALID_PASSWORD, f'password authentication failed for user "{user}"',
                      fatal=True)


async def _read_password(conn: Conn) -> bytes:
    kind, body = await conn.read_message(max_length=65536)
    if kind != b"p":
        raise ProxyError(codes.PROTOCOL_VIOLATION,
                         f"expected a password message, got message type {kind!r}", fatal=True)
    return body


async def authenticate(conn: Conn, method: str, user: str, password: str) -> None:
    """Run the chosen exchange; raise ProxyError (fatal) if the client fails it."""
    if method == "trust":
        return
    if method == "md5":
        await _md5(conn, user, password)
    else:
        await _scram(conn, user, password)


async def _md5(conn: Conn, user: str, password: str) -> None:
    salt = os.urandom(4)
    await conn.send(m.auth_request(m.AUTH_MD5, salt))
    answer = (await _read_password(conn)).rstrip(b"\x00")
    if not hmac.compare_digest(answer, md5_password(user, password, salt)):
        raise _failed(user)


async def _scram(conn: Conn, user: str, password: str) -> None:
    server = ScramServer(*_scram_auth_info(password))
    await conn.send(m.auth_sasl([SCRAM]))
    try:
        mechanism, first = m.parse_sasl_initial(await _read_password(conn))
    except ValueError as exc:
        raise ProxyError(codes.PROTOCOL_VIOLATION, str(exc), fatal=True) from None
    if mechanism != SCRAM:
        raise ProxyError(codes.PROTOCOL_VIOLATION,
                         f"client selected an invalid SASL authentication mechanism {mechanism!r}",
                         fatal=True)
    try:
        server_first = server.first(first.decode())
        await conn.send(m.auth_request(m.AUTH_SASL_CONTINUE, server_first.encode()))
        server_final = server.final((await _read_password(conn)).decode())
    except (ScramError, UnicodeDecodeError):
        raise _failed(user) from None
    await conn.send(m.auth_request(m.AUTH_SASL_FINAL, server_final.encode()))
