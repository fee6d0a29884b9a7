"""Authenticating clients against users.toml: SCRAM-SHA-256 (default), md5 or trust.

A client whose user name users.toml does not know goes through the same exchange as a
known one, against a verifier that never matches, and fails it the same way: the reply to a
probe does not tell which user names exist (PostgreSQL's own "mock authentication").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets

import scramp

from ..netio import Conn
from ..protocol import ProxyError
from ..protocol import errors as codes
from ..protocol import messages as m
from .scram import ScramError, ScramServer

SCRAM = "SCRAM-SHA-256"
METHODS = ("scram", "md5", "trust")
SCRAM_ITERATIONS = 4096
_SALT_LENGTH = 16
# A user's SCRAM salt is derived from its name with this per-process secret, for known and
# unknown names alike: stable while the process runs (as a stored salt is), the same form
# for both, unpredictable from outside, and not shared by two users with one password.
_SALT_SECRET = secrets.token_bytes(32)


def scram_salt(user: str) -> bytes:
    """The salt the SCRAM exchange offers `user`, whether or not users.toml knows it."""
    return hmac.digest(_SALT_SECRET, user.encode(), "sha256")[:_SALT_LENGTH]


@functools.lru_cache(maxsize=4096)
def _scram_auth_info(user: str, password: str) -> tuple:
    # PBKDF2 with 4096 rounds costs milliseconds: derive once per password, not per login.
    return scramp.ScramMechanism(SCRAM).make_auth_info(
        password, iteration_count=SCRAM_ITERATIONS, salt=scram_salt(user))


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


async def authenticate(conn: Conn, method: str, user: str, password: str | None) -> None:
    """Run the chosen exchange; raise ProxyError (fatal) if the client fails it.

    `password` None: the user is unknown. The exchange runs all the same (except for trust,
    which has no exchange: the caller refuses such a user) and always fails as a wrong
    password does."""
    if method == "trust":
        return
    if method == "md5":
        await _md5(conn, user, password)
    else:
        await _scram(conn, user, password)


async def _md5(conn: Conn, user: str, password: str | None) -> None:
    salt = os.urandom(4)
    await conn.send(m.auth_request(m.AUTH_MD5, salt))
    answer = (await _read_password(conn)).rstrip(b"\x00")
    expected = md5_password(user, password if password is not None else secrets.token_hex(16), salt)
    if not hmac.compare_digest(answer, expected) or password is None:
        raise _failed(user)


def _scram_server(user: str, password: str | None) -> ScramServer:
    if password is None:  # keys no client can prove: only the salt is shown
        return ScramServer(scram_salt(user), secrets.token_bytes(32), secrets.token_bytes(32),
                           SCRAM_ITERATIONS)
    return ScramServer(*_scram_auth_info(user, password))


async def _scram(conn: Conn, user: str, password: str | None) -> None:
    server = _scram_server(user, password)
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
    if password is None:
        raise _failed(user)
    await conn.send(m.auth_request(m.AUTH_SASL_FINAL, server_final.encode()))
