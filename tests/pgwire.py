"""A small raw PostgreSQL v3 protocol client for tests that send what no driver would.

Written independently of trio_pgdog.protocol on purpose: a test must not share the code it
checks. Everything here is async on Trio, and every read is bounded by a timeout, so a
proxy that hangs fails the test with trio.TooSlowError instead of hanging it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import scramp
import trio

TIMEOUT = 5.0  # seconds; the default bound on every read

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_I32 = struct.Struct("!i")


# --- building packets ---------------------------------------------------------------------


def version(major: int, minor: int) -> int:
    return (major << 16) | minor


def startup_packet(params: dict[str, str] | None = None, *, protocol: int = PROTOCOL_3_0,
                   body: bytes | None = None) -> bytes:
    """A StartupMessage; `body` replaces the (NUL-terminated) parameter list verbatim."""
    if body is None:
        body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00"
                        for k, v in (params or {}).items()) + b"\x00"
    payload = _I32.pack(protocol) + body
    return _I32.pack(len(payload) + 4) + payload


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret)


def message(kind: bytes, body: bytes = b"", *, length: int | None = None) -> bytes:
    """A typed message; `length` overrides the length field (to lie about it)."""
    return kind + _I32.pack(len(body) + 4 if length is None else length) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\x00")


def parse(sql: str, name: str = "") -> bytes:
    """A Parse without parameter types."""
    return message(b"P", name.encode() + b"\x00" + sql.encode() + b"\x00" + struct.pack("!h", 0))


def bind(statement: str = "", params: tuple[bytes, ...] = (), portal: str = "") -> bytes:
    """A Bind of text parameters, results in text."""
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    body += b"".join(struct.pack("!i", len(p)) + p for p in params)
    return message(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "") -> bytes:
    return message(b"E", portal.encode() + b"\x00" + struct.pack("!i", 0))


SYNC = message(b"S")


def terminate() -> bytes:
    return message(b"X")


def password(payload: bytes) -> bytes:
    return message(b"p", payload)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    kind: bytes
    body: bytes

    @property
    def fields(self) -> dict[str, str]:
        """ErrorResponse/NoticeResponse fields by code: S severity, C SQLSTATE, M message..."""
        out = {}
        for part in self.body.split(b"\x00"):
            if part:
                out[chr(part[0])] = part[1:].decode("utf-8", "replace")
        return out

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C") if self.kind in (b"E", b"N") else None

    def __repr__(self) -> str:
        if self.kind == b"E":
            return f"<E {self.fields}>"
        return f"<{self.kind.decode(errors='replace')} {self.body[:60]!r}>"


class ServerError(AssertionError):
    """The peer answered with an ErrorResponse where a test expected success."""

    def __init__(self, msg: Message):
        super().__init__(f"unexpected error: {msg.fields}")
        self.message = msg


@dataclass
class Login:
    pid: int = 0
    secret: int = 0
    params: dict[str, str] = field(default_factory=dict)
    before: list[Message] = field(default_factory=list)  # e.g. NegotiateProtocolVersion


@dataclass
class Result:
    rows: list[list[bytes | None]] = field(default_factory=list)
    error: Message | None = None
    status: bytes = b""  # ReadyForQuery transaction status


class Wire:
    """One raw client connection."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self._buf = bytearray()
        self.eof = False

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Wire:
        with trio.fail_after(TIMEOUT):
            return cls(await trio.open_tcp_stream(host, port))

    @property
    def local_port(self) -> int:
        return self.stream.socket.getsockname()[1]

    async def __aenter__(self) -> Wire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        with trio.fail_after(TIMEOUT):
            await self.stream.send_all(data)

    async def shutdown_write(self) -> None:
        """Half-close: the peer sees end of stream, we can still read its answer."""
        await self.stream.send_eof()

    async def _fill(self) -> bool:
        """Read more bytes; False at end of stream (a reset counts as the end too)."""
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    async def read_bytes(self, n: int, timeout: float = TIMEOUT) -> bytes:
        """Exactly n bytes, or fewer if the peer closes first."""
        with trio.fail_after(timeout):
            while len(self._buf) < n and await self._fill():
                pass
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_message(self, timeout: float = TIMEOUT) -> Message | None:
        """The next message, or None once the peer has closed the connection."""
        with trio.fail_after(timeout):
            while len(self._buf) < 5:
                if not await self._fill():
                    assert not self._buf, f"connection closed inside a message: {bytes(self._buf)!r}"
                    return None
            kind = bytes(self._buf[:1])
            (length,) = _I32.unpack_from(self._buf, 1)
            assert 4 <= length < 1 << 30, f"peer sent a message of type {kind!r} with length {length}"
            while len(self._buf) < 1 + length:
                if not await self._fill():
                    raise AssertionError(f"connection closed inside a {kind!r} message")
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return Message(kind, body)

    async def read_until_close(self, timeout: float = TIMEOUT) -> list[Message]:
        """Every message up to the end of the stream, which must come within `timeout`."""
        out = []
        with trio.fail_after(timeout):
            while (msg := await self.read_message(timeout)) is not None:
                out.append(msg)
        return out

    async def expect_fatal(self, sqlstate: str, timeout: float = TIMEOUT) -> Message:
        """The connection ends with one FATAL ErrorResponse with `sqlstate`, then a close."""
        messages = await self.read_until_close(timeout)
        errors = [msg for msg in messages if msg.kind == b"E"]
        assert len(errors) == 1 and messages[-1] is errors[0], messages
        fields = errors[0].fields
        assert fields.get("S") == "FATAL" and fields.get("C") == sqlstate, fields
        assert fields.get("M"), "an error without a message"
        return errors[0]

    # --- conversations --------------------------------------------------------------------

    async def login(self, user: str, database: str, password: str | None = None, *,
                    params: dict[str, str] | None = None, protocol: int = PROTOCOL_3_0) -> Login:
        """Send a StartupMessage and authenticate (trust, cleartext, md5 or SCRAM-SHA-256)."""
        await self.send(startup_packet({"user": user, "database": database, **(params or {})},
                                       protocol=protocol))
        return await self.finish_login(user, password)

    async def finish_login(self, user: str, secret: str | None) -> Login:
        """Answer authentication requests, then collect the startup burst to ReadyForQuery."""
        login = Login()
        scram: scramp.ScramClient | None = None
        while True:
            msg = await self.read_message()
            if msg is None:
                raise AssertionError("connection closed during login")
            if msg.kind == b"E":
                raise ServerError(msg)
            if msg.kind == b"R":
                (code,) = _I32.unpack_from(msg.body)
                payload = msg.body[4:]
                if code == 0:
                    continue
                assert secret is not None, f"asked for a password (method {code}) and none given"
                if code == 3:
                    await self.send(password(secret.encode() + b"\x00"))
                elif code == 5:
                    inner = hashlib.md5((secret + user).encode()).hexdigest().encode()
                    digest = b"md5" + hashlib.md5(inner + payload[:4]).hexdigest().encode()
                    await self.send(password(digest + b"\x00"))
                elif code == 10:
                    assert b"SCRAM-SHA-256\x00" in payload, payload
                    scram = scramp.ScramClient(["SCRAM-SHA-256"], user, secret)
                    first = scram.get_client_first().encode()
                    await self.send(password(b"SCRAM-SHA-256\x00" + _I32.pack(len(first)) + first))
                elif code == 11 and scram is not None:
                    scram.set_server_first(payload.decode())
                    await self.send(password(scram.get_client_final().encode()))
                elif code == 12 and scram is not None:
                    scram.set_server_final(payload.decode())
                else:
                    raise AssertionError(f"unexpected authentication request {code}")
            elif msg.kind == b"S":
                name, value, _ = msg.body.split(b"\x00", 2)
                login.params[name.decode()] = value.decode()
            elif msg.kind == b"K":
                login.pid, login.secret = struct.unpack_from("!ii", msg.body)
            elif msg.kind == b"Z":
                return login
            elif msg.kind not in (b"N",):
                login.before.append(msg)

    async def read_result(self, timeout: float = TIMEOUT) -> Result:
        """Messages up to ReadyForQuery: the rows and the error, if any."""
        result = Result()
        while True:
            msg = await self.read_message(timeout)
            if msg is None:
                raise AssertionError(f"connection closed before ReadyForQuery; so far {result}")
            if msg.kind == b"D":
                result.rows.append(_data_row(msg.body))
            elif msg.kind == b"E":
                result.error = msg
            elif msg.kind == b"Z":
                result.status = msg.body
                return result

    async def query(self, sql: str, timeout: float = TIMEOUT) -> Result:
        await self.send(query(sql))
        return await self.read_result(timeout)

    async def scalar(self, sql: str) -> str | None:
        """The first column of the only row of `sql`, as text; ServerError if it failed."""
        result = await self.query(sql)
        if result.error is not None:
            raise ServerError(result.error)
        assert len(result.rows) == 1, result
        value = result.rows[0][0]
        return None if value is None else value.decode()


def _data_row(body: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", body)
    pos, row = 2, []
    for _ in range(count):
        (n,) = _I32.unpack_from(body, pos)
        pos += 4
        if n < 0:
            row.append(None)
        else:
            row.append(body[pos : pos + n])
            pos += n
    return row


async def cancel(port: int, pid: int, secret: int, host: str = "127.0.0.1") -> None:
    """Send a CancelRequest on a new connection and wait for the peer to close it."""
    async with await Wire.connect(port, host) as wire:
        await wire.send(cancel_request(pid, secret))
        assert await wire.read_until_close() == []
