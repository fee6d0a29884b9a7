"""Non-blocking sockets driven by Trio's low-level readiness waits.

design.md measured this as the cheapest Trio data path: wait for readiness first, then
receive (no EAGAIN round trip), and send without waiting unless the socket is full.
Each wait is an epoll_ctl plus a task switch, so the hot path uses exactly one wait per
receive.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket

import trio

from .protocol import ProtocolError
from .protocol.messages import MAX_MESSAGE_LENGTH, parse_header

RECV_SIZE = 256 * 1024
# One receive buffer for the whole process (Trio runs one task at a time and every receive
# copies its bytes out at once): recv(256 KiB) would allocate, and for sizes this large
# mmap/munmap, a fresh buffer on every call.
_SCRATCH = bytearray(RECV_SIZE)
_SCRATCH_VIEW = memoryview(_SCRATCH)


def _recv_once(sock: socket.socket) -> bytes:
    """One non-blocking receive: bytes, or BlockingIOError; ConnectionClosed at EOF."""
    try:
        n = sock.recv_into(_SCRATCH)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise ConnectionClosed(str(exc)) from exc
    if not n:
        raise ConnectionClosed("connection closed by peer")
    return _SCRATCH_VIEW[:n].tobytes()


class ConnectionClosed(Exception):
    """The peer closed the connection or the socket failed."""


def send_some(sock, data: bytes | memoryview) -> int:
    """What the kernel takes of `data` now (0 if its buffer is full); ConnectionClosed if the
    peer is gone."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise ConnectionClosed(str(exc)) from exc


class Conn:
    """One non-blocking socket plus a small receive buffer for the message-at-a-time phases."""

    __slots__ = ("_buf", "closed", "fd", "peer", "sock")
    tls = False  # a TlsConn (tlsio.py) is the same socket with TLS on it

    def __init__(self, sock: socket.socket, peer: str = ""):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.closed = False
        # Bytes read past a message in the message-at-a-time phases (login); b"" (shared, no
        # allocation per connection) while there are none.
        self._buf: bytes | bytearray = b""

    async def recv(self) -> bytes:
        """Whatever bytes arrive next (at least one); ConnectionClosed at EOF."""
        if self._buf:
            data = bytes(self._buf)
            self._buf = b""
            return data
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return _recv_once(sock)
            except BlockingIOError:
                continue

    def recv_nowait(self) -> bytes | None:
        """Bytes already in the kernel buffer, None if there are none; ConnectionClosed at EOF."""
        try:
            return _recv_once(self.sock)
        except BlockingIOError:
            return None

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    def send_nowait(self, data: bytes) -> int:
        """Send what the kernel takes now; how many bytes that was."""
        return send_some(self.sock, data)

    async def send(self, data: bytes | bytearray | memoryview, sent: int = 0) -> None:
        """Send all of `data` (the first `sent` bytes already went), waiting only while the
        kernel buffer is full."""
        if not sent:
            sent = self.send_nowait(data)  # type: ignore[arg-type]
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        await trio.lowlevel.wait_writable(self.sock)
        while view:
            view = view[send_some(self.sock, view):]
            if view:
                await trio.lowlevel.wait_writable(self.sock)

    async def read_exactly(self, n: int) -> bytes:
        buf = self._buf
        while len(buf) < n:
            # recv() hands back a non-empty buffer first: empty it so recv reads the socket.
            self._buf = b""
            buf = buf if isinstance(buf, bytearray) else bytearray(buf)
            try:
                buf += await self.recv()
            finally:
                self._buf = buf  # kept on EOF too: the caller may report a partial message
        data = bytes(buf[:n])
        if len(buf) == n:
            self._buf = b""
        else:
            del buf[:n]  # type: ignore[union-attr]  # longer than n: read into a bytearray
        return data

    async def read_message(self, max_length: int = MAX_MESSAGE_LENGTH) -> tuple[bytes, bytes]:
        """One typed message (type byte, body); used outside the forwarding hot path."""
        header = await self.read_exactly(5)
        kind, length = parse_header(header)
        if length < 4 or length > max_length:
            raise ProtocolError(f"invalid message length {length} for message type {kind!r}")
        body = await self.read_exactly(length - 4)
        return kind, body

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(RuntimeError):  # outside trio (e.g. interpreter teardown)
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


async def connect_tcp(host: str, port: int) -> socket.socket:
    """Open a non-blocking TCP connection; the caller bounds the time with a cancel scope."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await _connect(sock, addr)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                last = exc
                continue
            raise
        set_nodelay(sock)
        return sock
    raise last or OSError(errno.EHOSTUNREACH, f"cannot resolve {host}")


async def _connect(sock: socket.socket, addr: tuple) -> None:
    try:
        sock.connect(addr)
        return
    except BlockingIOError:
        pass
    await trio.lowlevel.wait_writable(sock)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, errno.errorcode.get(err, str(err)))


def set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Poller:
    """Waits for either of two connections to become readable with a single Trio wait.

    A private level-triggered epoll set holds both sockets; Trio waits on the epoll fd.
    Used only where both sides may speak at once (COPY, open extended-protocol batches,
    idle session-mode servers), so the common request/response path stays one wait.
    """

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._watched: list[Conn] = []

    def watch(self, a: Conn, b: Conn) -> None:
        if len(self._watched) == 2 and self._watched[0] is a and self._watched[1] is b:
            return
        for conn in self._watched:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(conn.fd)
        self._watched = [a, b]
        for conn in self._watched:
            self._ep.register(conn.fd, select.EPOLLIN)

    async def wait(self) -> tuple[bool, bool]:
        """(first readable, second readable) once at least one is."""
        a, b = self._watched
        while True:
            ready = {fd for fd, _ in self._ep.poll(0)}
            if ready:
                return a.fd in ready, b.fd in ready
            await trio.lowlevel.wait_readable(self._ep)

    @property
    def waitable(self) -> select.epoll:
        """What wait() blocks on: notify_closing() it to interrupt the wait."""
        return self._ep

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(self._ep)
        self._ep.close()
