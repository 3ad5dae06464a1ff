"""The small HTTP/1.1 server the supervisor runs on `[metrics] listen`: /metrics, the dashboard
and its event stream. Read-only GETs, one request per connection.

It is built to be cheap and hard to hurt: request heads are bounded (16 KiB, 5 s), connections
and event streams are capped, and its own errors are logged at most once a minute each, so a
flood of connections costs a few lines, not one per connection. What a request may see is
decided elsewhere (gate.py, the app); this module only speaks HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from ai_server.base import logs

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
# One address may hold at most this many: a device that may see nothing cannot crowd out the owner.
MAX_PER_ADDRESS = 16
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]          # lower-case names; a repeated header keeps every value, joined by "\n"
    peer: str                         # the caller's address
    local: tuple[str, int]            # the address and port it called

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # An event stream: sent after the head, chunk by chunk, until it ends or the caller leaves.
    stream: AsyncIterator[bytes] | None = None


App = Callable[[Request], Awaitable[Response]]


class Throttled:
    """One log line per event name a minute at most, saying how many were left out."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self.log = logs.get()

    def warning(self, event: str, **fields: object) -> bool:
        now = self.clock()
        last = self._last.get(event)
        if last is not None and now - last < self.every_s:
            self._left_out[event] = self._left_out.get(event, 0) + 1
            return False
        self._last[event] = now
        left_out = self._left_out.pop(event, 0)
        self.log.warning(event, **fields, **({"similar_left_out": left_out} if left_out else {}))
        return True


def parse_head(head: bytes, peer: str, local: tuple[str, int]) -> Request | None:
    """A request from its head (request line and headers), or None when it is not HTTP/1.x."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for clarity of intent
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            return None
        if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
            return None
        key = name.lower()
        headers[key] = headers[key] + "\n" + value.strip() if key in headers else value.strip()
    path, _, query = parts[1].partition("?")
    return Request(parts[0], path, parse_qs(query, max_num_fields=16), headers, peer, local)


def _head(response: Response) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}",
             f"Content-Type: {response.content_type}", "Connection: close"]
    if response.stream is None:
        lines.append(f"Content-Length: {len(response.body)}")
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Server:
    """Serves `app` on each address; addresses that cannot be bound are logged and skipped:
    metrics and the dashboard are never a reason not to serve the proxy."""

    def __init__(self, app: App, throttled: Throttled | None = None) -> None:
        self.app = app
        self.throttled = throttled or Throttled()
        self.connections = 0
        self._by_address: dict[str, int] = {}
        self._servers: list[asyncio.AbstractServer] = []

    async def bind(self, addresses: list[tuple[str, int]]) -> None:
        self.close()
        for host, port in addresses:
            try:
                self._servers.append(await asyncio.start_server(self._on_client, host, port, reuse_address=True,
                                                                limit=HEAD_LIMIT))
            except OSError as err:
                logs.get().warning("metrics_not_served", address=f"{host}:{port}", error=err.strerror or str(err))

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str((writer.get_extra_info("peername") or ("",))[0])
        self.connections += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        try:
            if self.connections > MAX_CONNECTIONS or self._by_address[address] > MAX_PER_ADDRESS:
                self.throttled.warning("metrics_connections_refused", limit=MAX_CONNECTIONS, per_address=MAX_PER_ADDRESS,
                                       reason="too many connections to the metrics port at once")
                writer.write(_head(Response(503, b"busy\n")) + b"busy\n")
                await writer.drain()
                return
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the caller left or stalled: nothing to tell anyone
        except Exception as err:  # a bug must cost one connection, never the listener, and never a flood of lines
            self.throttled.warning("metrics_request_failed", error=repr(err))
        finally:
            self.connections -= 1
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            writer.write(_head(Response(431)))
            await writer.drain()
            return
        peer = writer.get_extra_info("peername") or ("", 0)
        sock = writer.get_extra_info("sockname") or ("", 0)
        request = parse_head(head[:-4], str(peer[0]), (str(sock[0]), int(sock[1])))
        if request is None:
            response = Response(400, b"not an HTTP/1.1 request\n")
        else:
            response = await self.app(request)
        body = b"" if request is not None and request.method == "HEAD" else response.body
        writer.write(_head(response) + body)
        await writer.drain()
        if response.stream is not None:
            try:
                async for chunk in response.stream:
                    writer.write(chunk)
                    await writer.drain()
            finally:
                await response.stream.aclose()  # type: ignore[attr-defined]
