"""A Conn that speaks TLS: Python's ssl engine over memory BIOs on the same raw socket.

The data path waits on sockets itself (netio.py: one readiness wait per receive, the
Poller's epoll set, the departure watch's poll over fds), so TLS keeps the socket and its
fd and only changes what a receive and a send do: ciphertext moves between the socket and
the engine's BIOs, plaintext between the engine and the caller. Plain connections never
see this class, so they cost what they did.

One rule keeps the readiness waits right: a receive decrypts every complete record it has,
so no plaintext ever waits inside the engine while the socket looks idle.
"""

from __future__ import annotations

import contextlib
import ssl

import trio

from .netio import _SCRATCH, _SCRATCH_VIEW, Conn, ConnectionClosed, send_some

# The most plaintext one TLS record holds: each read takes one whole record.
_RECORD = 16384


class TlsError(ConnectionClosed):
    """The TLS layer failed: a handshake refused, a certificate not trusted, garbage
    where a record should be. The connection is unusable."""


def _why(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc}"
    return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)


class TlsConn(Conn):
    """A TLS connection over `sock`; call `handshake` before anything else."""

    __slots__ = ("_accepted", "_engine", "_incoming", "_outgoing", "_unsent", "established")
    tls = True

    def __init__(self, sock, peer: str, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        super().__init__(sock, peer)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._engine = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                        server_hostname=server_hostname)
        self._unsent = b""  # ciphertext the kernel did not take yet
        self._accepted: object = None  # the data send_nowait encrypted but could not flush
        self.established = False

    # --- facts about the session ------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self._engine.version()

    @property
    def cipher(self) -> str | None:
        found = self._engine.cipher()
        return found[0] if found else None

    def peer_certificate(self) -> dict | None:
        return self._engine.getpeercert() or None

    def describe(self) -> str:
        """e.g. 'TLSv1.3 TLS_AES_256_GCM_SHA384', for the logs."""
        return f"{self.version} {self.cipher}"

    # --- the handshake ----------------------------------------------------------------------

    async def handshake(self) -> None:
        """Run the TLS handshake; TlsError if it fails, ConnectionClosed if the peer leaves.
        The caller bounds the time with a cancel scope."""
        while True:
            try:
                self._engine.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                with contextlib.suppress(ConnectionClosed):
                    self._flush_nowait()  # the engine's alert tells the peer why
                raise TlsError(f"TLS handshake failed: {_why(exc)}") from None
            await self._flush()
            await trio.lowlevel.wait_readable(self.sock)
            self._feed()
        self.established = True
        await self._flush()
        # The peer may have sent its first records with the end of the handshake: they are
        # in the engine now, where no readiness wait would see them.
        early = self._decrypt()
        if early:
            self._buf = bytearray(early)  # read_exactly cuts messages off a bytearray

    # --- receiving --------------------------------------------------------------------------

    def _feed(self) -> bool:
        """Move what the kernel has into the engine; False if it had nothing."""
        try:
            n = self.sock.recv_into(_SCRATCH)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc
        if not n:
            raise ConnectionClosed("connection closed by peer")
        self._incoming.write(_SCRATCH_VIEW[:n])
        return True

    def _decrypt(self) -> bytes:
        """The plaintext of every complete record received so far (b"" if none)."""
        engine = self._engine
        parts = []
        while True:
            try:
                parts.append(engine.read(_RECORD))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                if parts:  # what came before the close_notify still counts
                    break
                raise ConnectionClosed("connection closed by peer (TLS close_notify)") from None
            except ssl.SSLError as exc:
                raise TlsError(f"TLS error: {_why(exc)}") from None
            if not self._incoming.pending and not engine.pending():
                break  # nothing left to decrypt: skip the SSLWantReadError round
        if self._outgoing.pending:  # the engine answered something (a key update)
            self._flush_nowait()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def recv_nowait(self) -> bytes | None:
        if not self._feed():
            return None
        return self._decrypt() or None

    async def recv(self) -> bytes:
        if self._buf:
            data = bytes(self._buf)
            self._buf = b""
            return data
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            data = self.recv_nowait()
            if data:
                return data

    def close(self) -> None:
        """Say close_notify (without waiting for the peer's), then close: libpq reads a bare
        EOF as an error (a cancel request over TLS would report one)."""
        if not self.closed and self.established:
            with contextlib.suppress(ssl.SSLError, ConnectionClosed):
                self._engine.unwrap()
            with contextlib.suppress(ssl.SSLError, ConnectionClosed, OSError):
                self._flush_nowait()
        super().close()

    # --- sending ----------------------------------------------------------------------------

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        if not self.established:
            # An error for a client whose handshake did not finish (login timeout): it
            # could not read plaintext, so it gets nothing but the close.
            raise ConnectionClosed("TLS handshake not completed")
        try:
            self._engine.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS error: {_why(exc)}") from None

    def _flush_nowait(self) -> bool:
        """Send the ciphertext waiting, as much as the kernel takes; True if none is left."""
        out = self._unsent
        if self._outgoing.pending:
            out = out + self._outgoing.read() if out else self._outgoing.read()
        if not out:
            return True
        self._unsent = out[send_some(self.sock, out):]
        return not self._unsent

    async def _flush(self) -> None:
        while not self._flush_nowait():
            await trio.lowlevel.wait_writable(self.sock)

    def send_nowait(self, data: bytes) -> int:
        """Encrypt all of `data` and send what the kernel takes: len(data) if all of it went;
        0 if some waits, and then `send(data, 0)` sends the rest without encrypting again."""
        if data:
            self._encrypt(data)
        if self._flush_nowait():
            return len(data)
        self._accepted = data
        return 0

    async def send(self, data: bytes | bytearray | memoryview, sent: int = 0) -> None:
        if self._accepted is data and not sent:
            self._accepted = None  # encrypted by send_nowait already
        elif sent < len(data):
            self._accepted = None
            self._encrypt(memoryview(data)[sent:])
        await self._flush()
