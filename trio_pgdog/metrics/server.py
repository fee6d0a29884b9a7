"""GET /metrics over HTTP/1.1, served by a Trio task in the proxy's nursery.

A request is read up to the end of its headers (bounded in size and time), answered, and
the connection closed. The body is prometheus-client's exposition of a private registry
holding the proxy's collector and the process collector; OpenMetrics text when the scraper
asks for it (Accept header), the Prometheus text format otherwise. Any other path is 404.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from .collector import ProxyCollector

if TYPE_CHECKING:
    from ..app import Proxy

log = logging.getLogger(__name__)

MAX_REQUEST = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds to send them


def registry_for(app: Proxy) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(app))
    ProcessCollector(registry=registry)
    return registry


async def serve(app: Proxy, sock: socket.socket, *,
                task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve /metrics on `sock` (bound by listener.bind, not yet listening)."""
    registry = registry_for(app)
    sock.listen(128)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    host, port = sock.getsockname()[:2]
    log.info("metrics on http://%s:%d/metrics", host, port)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, registry)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        except Exception:  # a scrape must never take the proxy down
            log.exception("metrics: answering a scrape failed")
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, [listener])


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            return
        request += chunk
        if len(request) > MAX_REQUEST:
            await stream.send_all(_response(431, "text/plain", b"request headers too large\n"))
            return
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await stream.send_all(_response(400, "text/plain", b"bad request\n"))
        return
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        await stream.send_all(_response(405, "text/plain", b"only GET /metrics\n",
                                        extra="Allow: GET, HEAD\r\n"))
        return
    if target != "/metrics":
        await stream.send_all(_response(404, "text/plain", b"not found: try /metrics\n"))
        return
    accept = next((line.split(":", 1)[1].strip() for line in head[1:]
                   if line.lower().startswith("accept:")), "")
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    await stream.send_all(_response(200, content_type, b"" if method == "HEAD" else body,
                                    length=len(body)))


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}


def _response(status: int, content_type: str, body: bytes, *, extra: str = "",
              length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            f"Connection: close\r\n{extra}\r\n")
    return head.encode() + body
