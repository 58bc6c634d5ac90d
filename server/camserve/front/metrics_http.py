"""The Prometheus /metrics endpoint: a small HTTP/1.1 server on the event loop that no client can hold.

prometheus-client's own server (``start_http_server``) gives each connection a thread and no timeout:
one client that sends half a request holds a thread and a descriptor in the serving process for ever,
and ~115 of them exhaust a 128-descriptor limit that the gRPC port and Kubernetes' probes share. This
server runs on the server's event loop (an open connection costs a descriptor and a few KiB, no
thread) and bounds what a client can hold:

* the request must arrive whole within ``timeout_s`` of the connection opening, else it is closed;
* at most ``max_connections`` are served at once; one more closes the oldest that has not sent its
  whole request yet (a scraper sends its request at once, so it is not the one closed), or itself if
  all are being answered. With those accepted but not yet admitted (at most the listen backlog,
  ``max_connections``, per wake-up of the loop; a loop slowed by a loaded machine can make a few
  wake-ups before admitting) and those closed but not yet released, the endpoint holds a few times
  ``max_connections`` descriptors, however many clients connect;
* the response must be taken within ``timeout_s`` too; one request per connection (``Connection: close``).

The body is prometheus-client's exposition (``choose_encoder``: OpenMetrics when the scraper asks for
it; gzip when accepted), rendered in a worker thread so the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
from collections import OrderedDict

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsHTTPServer"]

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 16 << 10  # request line + headers; a scraper sends a few hundred bytes
PATHS = ("/metrics", "/")


def _dual_stack(port: int) -> socket.socket:
    """A TCP socket bound to ``port`` on every IPv6 and IPv4 address (IPv4 only where the machine has no
    IPv6)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        else:
            sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


class MetricsHTTPServer:
    """Serve ``registry`` at /metrics; ``await start(host, port)``, then ``close()``."""

    def __init__(self, registry: CollectorRegistry, *, max_connections: int = 16,
                 timeout_s: float = 10.0) -> None:
        self.registry = registry
        self.max_connections = max(1, int(max_connections))
        self.timeout_s = float(timeout_s)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._waiting: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()  # oldest first

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 = a free port); returns the port. Raises OSError (e.g. in use).

        ``::`` (or ``[::]``, or empty) is every address of both families, as it is to gRPC on the same
        ``--host``: asyncio alone binds ``::`` IPv6-only (it sets IPV6_V6ONLY), which refused IPv4
        scrapers of a server whose gRPC port took IPv4 calls."""
        # The backlog also caps how many connections one wake-up accepts before any is admitted.
        kwargs = {"limit": MAX_REQUEST_HEAD, "backlog": self.max_connections}
        if host.strip("[]") in ("", "::"):
            self._server = await asyncio.start_server(self._serve, sock=_dual_stack(port), **kwargs)
        else:
            self._server = await asyncio.start_server(self._serve, host, port, **kwargs)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        """Stop listening and drop every open connection (at once; nothing to wait for)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        self._waiting.clear()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Make room for ``writer`` (closing the oldest one still sending its request), or refuse it."""
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self._open.discard(oldest)
            oldest.transport.abort()
        self._open.add(writer)
        self._waiting[writer] = None
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.transport.abort()
            return
        sent = False
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout_s)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # slow, half-sent, oversized or gone: nothing to answer
            self._waiting.pop(writer, None)
            status, headers, body, with_body = await self._respond(head)
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}",
                     "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + (body if with_body else b""))
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(writer.drain(), self.timeout_s)
                sent = True
        except Exception:  # a bug here must show, and must not leave the connection open
            log.exception("metrics endpoint: request failed")
        finally:
            self._waiting.pop(writer, None)
            self._open.discard(writer)
            if sent:
                writer.close()
            else:  # nothing (more) to deliver: drop it now rather than flush to a reader that stalls
                writer.transport.abort()

    async def _respond(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes, bool]:
        """(status line text, headers, body, whether to send the body) for one request head."""
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", text, b"bad request line\n", True
        method, target, _ = parts
        if target.split("?", 1)[0] not in PATHS:
            return "404 Not Found", text, b"metrics are at /metrics\n", True
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD"), *text], b"use GET\n", True
        fields: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        encoder, content_type = choose_encoder(fields.get("accept", ""))
        body = await asyncio.to_thread(encoder, self.registry)
        headers = [("Content-Type", content_type)]
        if "gzip" in fields.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        return "200 OK", headers, body, method == "GET"
