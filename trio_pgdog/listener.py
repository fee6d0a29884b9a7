"""The clients' listening socket: bound first, listening once the proxy can serve.

Binding early (before plugins load, before the demo starts its clusters) finds a port that
is taken before any time is spent; `listen` opens it to clients once everything is ready.
Either step that fails raises `ListenError`, one line naming the address and what to do.
"""

from __future__ import annotations

import errno
import os
import socket

__all__ = ["ListenError", "bind", "listen", "who_listens"]

BACKLOG = 4096
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


class ListenError(Exception):
    """The proxy cannot listen where it was told to; ``str(err)`` is one line for an operator."""


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, not yet listening (clients are refused until `listen`).
    `reuse_port`: the workers of one proxy each bind the port (workers.py)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(_why(host, port, exc)) from None
    return sock


def listen(sock: socket.socket) -> None:
    """Start accepting clients on a socket from `bind` (non-blocking from here on)."""
    try:
        sock.listen(BACKLOG)
    except OSError as exc:
        # Another socket bound with SO_REUSEADDR may have started listening first.
        host, port = sock.getsockname()[:2]
        raise ListenError(_why(host, port, exc)) from None
    sock.setblocking(False)


def _why(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return (f"{where}: unknown host ({exc.strerror}); choose another address with --host "
                "or [general] host in pgdog.toml")
    if exc.errno == errno.EADDRINUSE:
        holder = who_listens(port)
        by = f" (by {holder})" if holder else ""
        return (f"{where}: the address is already in use{by}; choose another port with --port "
                "or [general] port in pgdog.toml, or stop what is listening there")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: no such address on this machine; choose another with --host or "
                "[general] host in pgdog.toml (0.0.0.0: every address)")
    if exc.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need privileges); choose "
                "another port with --port or [general] port in pgdog.toml")
    return f"{where}: {exc.strerror or exc}"


def who_listens(port: int) -> str | None:
    """"pid N (command line)" of a process listening on TCP `port`, when /proc tells (Linux,
    and only for processes this user may look at); None otherwise."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _TCP_LISTEN \
                            and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, ValueError, IndexError):
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, _listdir("/proc")):
        for fd in _listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return f"pid {pid}: {_command(pid)}"
            except OSError:
                continue
    return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode(errors="replace").split()) for w in words if w.strip())
    return text if len(text) <= 80 else text[:77] + "..."
