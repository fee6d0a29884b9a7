"""TLS settings turned into ssl contexts: towards clients (the proxy as TLS server) and
towards PostgreSQL (tls_verify), and the SSLRequest exchange with a server.

Certificate paths are taken relative to pgdog.toml's directory, like plugin paths.
Contexts are built when the configuration is loaded or reloaded (a reload reads the files
again, so renewed certificates reach new connections; running ones keep theirs).
"""

from __future__ import annotations

import os
import ssl
import struct
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .config.models import Config, General
    from .netio import Conn

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class TlsFileError(Exception):
    """A TLS key of [general] names a file that cannot be used; `key` says which."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def base_dir(config: Config) -> str:
    """Where relative certificate paths start: pgdog.toml's directory (else the cwd)."""
    return os.path.dirname(os.path.abspath(config.pgdog_path)) if config.pgdog_path else os.getcwd()


def _path(base: str, path: str) -> str:
    return os.path.join(base, os.path.expanduser(path))


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def _load_ca(context: ssl.SSLContext, key: str, path: str) -> None:
    _readable(key, path)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise TlsFileError(key, f"{path} holds no PEM certificate") from None


# --- towards clients ------------------------------------------------------------------------


def client_context(config: Config) -> ssl.SSLContext | None:
    """The context clients' TLS sessions use; None when [general] has no tls_certificate.
    TlsFileError names the key whose file cannot be used."""
    g = config.general
    if not g.tls_certificate or not g.tls_private_key:
        return None
    base = base_dir(config)
    cert, key = _path(base, g.tls_certificate), _path(base, g.tls_private_key)
    _readable("tls_certificate", cert)
    _readable("tls_private_key", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise _which_file(cert, key, exc) from None
    if g.tls_client_ca_certificate:
        _load_ca(context, "tls_client_ca_certificate", _path(base, g.tls_client_ca_certificate))
        context.verify_mode = ssl.CERT_REQUIRED  # mTLS: every TLS client shows a certificate
    return context


def _which_file(cert: str, key: str, exc: ssl.SSLError) -> TlsFileError:
    """load_cert_chain failed: was it the certificate or the key?"""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except ssl.SSLError:
        return TlsFileError("tls_certificate", f"{cert} holds no PEM certificate")
    if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
        return TlsFileError("tls_private_key", f"{key} is not the private key of {cert}")
    return TlsFileError("tls_private_key", f"{key} holds no PEM private key")


def describe_clients(config: Config) -> str:
    """One line for the start-up log: is TLS on towards clients, and how."""
    g = config.general
    if not g.tls_certificate:
        return "TLS towards clients: off (no tls_certificate in [general])"
    how = "required" if g.tls_client_required else "optional"
    certs = (f", client certificates verified against {g.tls_client_ca_certificate}"
             if g.tls_client_ca_certificate else "")
    return f"TLS towards clients: on ({how}, certificate {g.tls_certificate}{certs})"


# --- towards PostgreSQL ---------------------------------------------------------------------


@attrs.frozen
class ServerTls:
    """How a pool talks TLS to its server: tls_verify and the CA file (an absolute path)."""

    mode: str = "prefer"
    ca_file: str | None = None

    @property
    def verifies(self) -> bool:
        return self.mode in ("verify_ca", "verify_full")

    def context(self) -> ssl.SSLContext:
        context = _SERVER_CONTEXTS.get(self)
        if context is None:
            context = _SERVER_CONTEXTS[self] = _server_context(self)
        return context


_SERVER_CONTEXTS: dict[ServerTls, ssl.SSLContext] = {}


def server_tls(config: Config) -> ServerTls:
    g = config.general
    ca = _path(base_dir(config), g.tls_server_ca_certificate) if g.tls_server_ca_certificate else None
    return ServerTls(g.tls_verify, ca)


def forget_server_contexts() -> None:
    """A reload: the next server connections read the CA files again."""
    _SERVER_CONTEXTS.clear()


def _server_context(tls: ServerTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verifies:  # prefer: encrypted, but any certificate will do (as libpq's)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.check_hostname = tls.mode == "verify_full"
    if tls.ca_file:
        _load_ca(context, "tls_server_ca_certificate", tls.ca_file)
    else:
        context.load_default_certs()
    return context


def check_server_ca(config: Config) -> None:
    """TlsFileError if tls_server_ca_certificate cannot be used."""
    tls = server_tls(config)
    if tls.ca_file:
        _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "tls_server_ca_certificate", tls.ca_file)


def describe_servers(general: General) -> str:
    ca = f", CA {general.tls_server_ca_certificate}" if general.tls_server_ca_certificate else ""
    return f"TLS towards servers: tls_verify = {general.tls_verify}{ca}"


async def negotiate(conn: Conn, host: str, port: int, tls: ServerTls) -> Conn:
    """Ask the server for TLS (SSLRequest); the connection to use from here on: a TlsConn
    after a handshake, or `conn` itself where `prefer` meets a server without TLS.
    Raises TlsError / ProtocolError / ConnectionClosed, each naming the server."""
    from .protocol import ProtocolError
    from .tlsio import TlsConn, TlsError

    where = f"server {host}:{port}"
    await conn.send(SSL_REQUEST)
    answer = await conn.read_exactly(1)
    if answer == b"N":
        if tls.verifies:
            raise TlsError(f"the server does not accept TLS, and tls_verify = {tls.mode} requires "
                           "it (turn ssl on in PostgreSQL, or lower tls_verify)")
        return conn
    if answer != b"S":
        raise ProtocolError(f"{where} answered the SSL request with {answer!r}")
    if conn.buffered:  # bytes before the handshake could be injected by a man in the middle
        raise ProtocolError(f"{where} sent unencrypted data after accepting the SSL request")
    try:
        context = tls.context()
    except TlsFileError as exc:  # the CA file went away since the configuration was loaded
        raise TlsError(str(exc)) from None
    secure = TlsConn(conn.sock, conn.peer, context, server_side=False, server_hostname=host)
    try:
        await secure.handshake()
    except TlsError as exc:
        raise TlsError(f"{exc} (tls_verify = {tls.mode})") from None
    return secure
