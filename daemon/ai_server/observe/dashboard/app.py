"""What the `[metrics]` listener answers: the dashboard at /, its event stream at /events, its two
static files, and /metrics, each behind the gate (gate.py).

Live without polling from the browser: one task here reads the supervisor's state every half
second while at least one page is open (nothing at all while none is), renders the sections that
changed once, and pushes the same bytes to every open page as Server-Sent Events, with the
requests that started or ended since. A page that stops reading is dropped, never waited for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from ai_server.observe import gate
from ai_server.observe.dashboard import page, view
from ai_server.observe.feed import Feed, InFlight, parse_live
from ai_server.observe.http import Request, Response
from ai_server.observe.metrics import CONTENT_TYPE

TICK_S = 0.5
MAX_STREAMS = 16
STREAM_BACKLOG = 256        # events queued for one page before it counts as gone
KEEPALIVE_S = 15.0
STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Nothing from another host, no inline script or style, no framing, no referrer.
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

State = Callable[[], Awaitable[dict[str, Any]]]


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Dashboard:
    """The listener's app (`await dashboard(request)`) and its push task (`run`)."""

    def __init__(self, feed: Feed, state: State, audience: Callable[[], gate.Audience],
                 scrape: Callable[[], Awaitable[str]], host: str, clock: Callable[[], float] = time.time) -> None:
        self.feed, self.state, self.audience, self.scrape, self.host, self.clock = feed, state, audience, scrape, host, clock
        # Each open page's queue, and the request that opened it: judged again on every push, so a
        # client that stops being an admin (or a device that leaves the tailnet) stops seeing it.
        self._streams: dict[asyncio.Queue[bytes | None], Request] = {}
        self._sections: dict[str, str] = {}
        self._clients: list[str] = []
        self._someone = asyncio.Event()
        self._static: dict[str, bytes] = {}

    # -- requests ------------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        verdict = _judge(request, self.audience())
        if verdict.status != 200:
            extra = {"WWW-Authenticate": "Bearer"} if verdict.status == 401 else {}
            return self._plain(verdict.status, f"{verdict.reason}\n", extra)
        if request.method not in ("GET", "HEAD"):
            return self._plain(405, "read-only: GET only\n", {"Allow": "GET, HEAD"})
        if request.path == "/metrics":
            return Response(200, (await self.scrape()).encode(), CONTENT_TYPE, dict(SECURITY_HEADERS))
        if request.path == "/":
            return await self._page(request)
        if request.path == "/favicon.ico":
            return Response(200, self._file("favicon.svg"), STATIC["favicon.svg"], dict(SECURITY_HEADERS))
        if request.path == "/events":
            return await self._stream(request)
        name = request.path.removeprefix("/static/")
        if name in STATIC and request.path.startswith("/static/"):
            return Response(200, self._file(name), STATIC[name], dict(SECURITY_HEADERS))
        return self._plain(404, "not here: / (the dashboard), /metrics\n")

    def _plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> Response:
        return Response(status, text.encode(), headers={**SECURITY_HEADERS, **(extra or {})})

    def _file(self, name: str) -> bytes:
        if name not in self._static:
            self._static[name] = (resources.files("ai_server.observe.dashboard") / "static" / name).read_bytes()
        return self._static[name]

    async def _page(self, request: Request) -> Response:
        await self._refresh()
        chosen = next(iter(request.query.get("client") or []), None) or None
        text = page.render(self.host, self._sections, self.feed.recent(chosen), self._clients, chosen)
        return Response(200, text.encode(), "text/html; charset=utf-8", dict(SECURITY_HEADERS))

    async def _stream(self, request: Request) -> Response:
        if len(self._streams) >= MAX_STREAMS:
            return self._plain(503, f"at most {MAX_STREAMS} dashboards at once\n", {"Retry-After": "5"})
        if not self._streams:  # nothing has kept the sections current while no page was open
            await self._refresh()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_BACKLOG)
        # The page's first picture: every section and every row, then what changes.
        first = b"retry: 1000\n\n" + b"".join(_event("section", {"id": k, "html": v}) for k, v in self._sections.items())
        # Rows always travel oldest first; the page puts each new one on top.
        first += _event("rows", {"html": view.requests(self.feed.recent()[::-1]), "reset": True})
        queue.put_nowait(first)
        self._streams[queue] = request
        self._someone.set()
        return Response(200, content_type="text/event-stream; charset=utf-8",
                        headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"}, stream=self._events(queue))

    async def _events(self, queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    chunk = b": keep-alive\n\n"
                if chunk is None:
                    return
                yield chunk
        finally:
            self._streams.pop(queue, None)

    # -- pushing -------------------------------------------------------------------------------

    def _publish(self, chunk: bytes) -> None:
        audience = self.audience()
        for queue, request in list(self._streams.items()):
            if _judge(request, audience).status != 200:
                self._end(queue)
                continue
            if not chunk:
                continue
            try:
                queue.put_nowait(chunk)
            except asyncio.QueueFull:
                # A page that stopped reading: drop it rather than hold its backlog forever.
                self._end(queue)

    def _end(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._streams.pop(queue, None)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    async def _refresh(self) -> dict[str, str]:
        """The state read again, the feed told what is in flight; the sections that changed."""
        state = await self.state()
        self.feed.in_flight(state.get("inflight") or [])
        self._clients = sorted(set(state.get("client_names") or []) | {str(r.get("who")) for r in self.feed.rows.values()})
        fresh = view.sections(state, self.feed.calling(), self.clock())
        changed = {k: v for k, v in fresh.items() if self._sections.get(k) != v}
        self._sections = fresh
        return changed

    async def tick(self) -> None:
        changed = await self._refresh()
        chunk = b"".join(_event("section", {"id": k, "html": v}) for k, v in changed.items())
        rows = self.feed.changed()
        if rows:
            chunk += _event("rows", {"html": "".join(view.request_row(r) for r in rows)})
        if self._streams:
            self._publish(chunk)

    async def run(self) -> None:
        """While any page is open: read, render, push, every TICK_S."""
        while True:
            if not self._streams:
                self._someone.clear()
                await self._someone.wait()
            await self.tick()
            await asyncio.sleep(TICK_S)


def _judge(request: Request, audience: gate.Audience) -> gate.Verdict:
    return gate.judge(request.header("host"), request.peer, request.local, request.header("authorization"),
                      request.header("x-api-key"), audience)


def in_flight(table: dict[str, dict[str, int]]) -> list[InFlight]:
    """HAProxy's live table (runtime.table) as the generations in progress."""
    out = []
    for key, row in table.items():
        item = parse_live(key)
        if item is not None and row.get("use", 0) > 0:
            out.append(item)
    return out
