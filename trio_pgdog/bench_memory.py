"""Memory per idle client: a pooler's RSS with none and with many idle logged-in clients.

Each client opens a TCP connection, logs in (SCRAM-SHA-256, md5 or cleartext, whatever the
pooler asks for) and waits for ReadyForQuery; then all of them sit there while the pooler's
VmRSS is read from /proc. The same raw client serves every pooler, so the figures compare.
Used by `python -m trio_pgdog.bench` (docs/benchmarks.md) and by tests/test_memory.py.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import resource
import secrets
import struct
import time
from dataclasses import dataclass

import trio

# Logins under way at once: enough to be quick, few enough for any listen backlog.
LOGIN_CONCURRENCY = 32
LOGIN_TIMEOUT = 30.0
# RSS is read after it has not moved for this long (the pooler may still be finishing up).
SETTLE_SECONDS = 0.3
SETTLE_TIMEOUT = 5.0


class IdleClientError(Exception):
    """A client could not log in (refused, closed, or too slow)."""


@dataclass(frozen=True)
class MemoryFigure:
    """A pooler's resident memory with no clients and with `clients` idle ones."""

    target: str
    clients: int
    rss_before_kb: int
    rss_after_kb: int

    @property
    def kb_per_client(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.clients


def rss_kb(pid: int) -> int:
    """VmRSS of process `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise IdleClientError(f"no VmRSS in /proc/{pid}/status")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (children inherit it); the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# --- one client's login ---------------------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup(user: str, database: str) -> bytes:
    params = b"".join(k + b"\0" + v.encode() + b"\0"
                      for k, v in ((b"user", user), (b"database", database))) + b"\0"
    body = struct.pack("!i", 196608) + params
    return struct.pack("!i", len(body) + 4) + body


@functools.lru_cache(maxsize=16)
def _client_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey): PBKDF2 once per salt, not once per login."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest(), server_key


class _Scram:
    """The client side of SCRAM-SHA-256 as libpq speaks it (empty user name, no binding)."""

    def __init__(self, password: str):
        self.password = password
        self.bare = "n=,r=" + base64.b64encode(secrets.token_bytes(18)).decode()
        self.signature = b""

    def first(self) -> bytes:
        first = ("n,," + self.bare).encode()
        return b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first

    def final(self, server_first: str) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        client_key, stored_key, server_key = _client_keys(
            self.password, base64.b64decode(attrs["s"]), int(attrs["i"]))
        without_proof = "c=biws,r=" + attrs["r"]
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


class _Reader:
    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buf = bytearray()

    async def message(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!i", self.buf, 1)[0]
                if len(self.buf) >= 1 + length:
                    kind, body = bytes(self.buf[:1]), bytes(self.buf[5 : 1 + length])
                    del self.buf[: 1 + length]
                    return kind, body
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise IdleClientError("the pooler closed the connection during login")
            self.buf += chunk


async def login(port: int, user: str, password: str, database: str,
                host: str = "127.0.0.1") -> trio.SocketStream:
    """A connection that has logged in and received ReadyForQuery."""
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(_startup(user, database))
        reader, scram = _Reader(stream), None
        while True:
            kind, body = await reader.message()
            if kind == b"Z":
                return stream
            if kind == b"E":
                fields = dict((f[:1].decode(), f[1:].decode()) for f in body.split(b"\0") if f)
                raise IdleClientError(f"login refused: {fields.get('C')} {fields.get('M')}")
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, notices
            code = struct.unpack_from("!i", body)[0]
            if code == 3:  # cleartext
                answer = password.encode() + b"\0"
            elif code == 5:  # md5
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                answer = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode() + b"\0"
            elif code == 10:  # SASL
                scram = _Scram(password)
                answer = scram.first()
            elif code == 11 and scram is not None:
                answer = scram.final(body[4:].decode())
            elif code == 12 and scram is not None:
                if body[4:] != b"v=" + base64.b64encode(scram.signature):
                    raise IdleClientError("the pooler's SCRAM signature does not match")
                continue
            elif code == 0:
                continue
            else:
                raise IdleClientError(f"unsupported authentication request {code}")
            await stream.send_all(_message(b"p", answer))
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def open_idle_clients(port: int, count: int, user: str, password: str,
                            database: str) -> list[trio.SocketStream]:
    """`count` logged-in connections to `port`; the caller closes them."""
    streams: list[trio.SocketStream] = []
    limiter = trio.CapacityLimiter(LOGIN_CONCURRENCY)

    async def one() -> None:
        async with limiter:
            streams.append(await login(port, user, password, database))

    try:
        with trio.fail_after(LOGIN_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
    except BaseException:
        await close_all(streams)
        raise
    return streams


async def close_all(streams: list[trio.SocketStream]) -> None:
    for stream in streams:
        await trio.aclose_forcefully(stream)


async def settled_rss_kb(pid: int) -> int:
    """VmRSS once it has stopped moving (or after SETTLE_TIMEOUT)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        await trio.sleep(SETTLE_SECONDS)
        now = rss_kb(pid)
        if now == last:
            break
        last = now
    return last


async def measure(target: str, pid: int, port: int, clients: int, user: str, password: str,
                  database: str) -> MemoryFigure:
    """RSS of pooler `pid` before and while `clients` idle clients are logged in.

    One client logs in and out first, so that the pooler's first-login work (a server
    connection for the startup parameters, cached SCRAM keys) is not charged to the clients.
    """
    await close_all([await login(port, user, password, database)])
    before = await settled_rss_kb(pid)
    streams = await open_idle_clients(port, clients, user, password, database)
    try:
        after = await settled_rss_kb(pid)
    finally:
        await close_all(streams)
    return MemoryFigure(target, clients, before, after)


def measure_sync(target: str, pid: int, port: int, clients: int, user: str, password: str,
                 database: str) -> MemoryFigure:
    """measure() from synchronous code (the benchmark, the tests)."""
    return trio.run(measure, target, pid, port, clients, user, password, database)
