"""`[alerts] webhook`: each alert change POSTed as JSON, an ntfy message or a Slack message.

Deliveries run in one background task, in order (a resolved message never overtakes its
firing), each retried with doubling backoff (1 s to 5 min) for up to an hour, then given up
with a log line. Sending only queues: the supervisor never waits for a webhook. URLs carry their
secret in the path or the query (an ntfy topic, a Slack hook), so only `redact(url)` is ever
logged, and error texts are scrubbed of the URL too.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ai_server.base import logs
from ai_server.observe.alerts import Change

FORMATS = ("json", "ntfy", "slack")
QUEUE_MAX = 256
BACKOFF_S = (1.0, 300.0)
GIVE_UP_AFTER_S = 3600.0
TIMEOUT_S = 10.0

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


def redact(url: str) -> str:
    """scheme://host[:port]/… — never the path, query or user information."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a webhook URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/…"


def scrub(text: str, url: str) -> str:
    """`text` without the URL, its path or its query: what an error may safely say."""
    text = text.replace(url, redact(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for secret in (parts.path, parts.query, parts.password or "", parts.username or ""):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _header(text: str) -> str:
    """A header value from our text: printable ASCII only, nothing that could end the header."""
    return re.sub(r"[^\x20-\x7e]", "?", text)[:200]


def _slack(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>) and & as an entity: escape all three.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(fmt: str, change: Change, host: str) -> tuple[bytes, dict[str, str]]:
    """The request body and headers for one change (pure)."""
    alert = change.alert
    about = f" ({alert.subject})" if alert.subject else ""
    title = f"ai-server on {host}: {alert.condition}{about} {change.state}"
    if fmt == "ntfy":
        firing = change.state == "firing"
        headers = {"Content-Type": "text/plain; charset=utf-8", "Title": _header(title),
                   "Priority": ("urgent" if alert.severity == "critical" else "high") if firing else "default",
                   "Tags": ("rotating_light" if alert.severity == "critical" else "warning") if firing else "white_check_mark"}
        return change.message.encode(), headers
    if fmt == "slack":
        mark = ":rotating_light:" if change.state == "firing" else ":white_check_mark:"
        text = f"{mark} *{_slack(title)}*\n{_slack(change.message)}"
        return json.dumps({"text": text}).encode(), {"Content-Type": "application/json"}
    body = {"source": "ai-server", "host": host, "condition": alert.condition, "subject": alert.subject,
            "state": change.state, "severity": alert.severity, "message": change.message,
            "since": _iso(alert.since), "at": _iso(change.at)}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


async def _httpx_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
        return (await client.post(url, content=body, headers={**headers, "User-Agent": "ai-server"})).status_code


class Deliverer:
    def __init__(self, host: str, post: Post = _httpx_post, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.post, self.sleep, self.clock = host, post, sleep, clock
        self.url, self.fmt = "", "json"
        self._queue: deque[Change] = deque()
        self._ready = asyncio.Event()
        self.log = logs.get()

    def configure(self, url: str, fmt: str) -> None:
        self.url, self.fmt = url, fmt

    def send(self, change: Change) -> None:
        """Queue one change; never waits. Past QUEUE_MAX the oldest is dropped, and said so."""
        if not self.url:
            return
        if len(self._queue) >= QUEUE_MAX:
            dropped = self._queue.popleft()
            self.log.warning("alert_not_delivered", condition=dropped.alert.condition, webhook=redact(self.url),
                             reason=f"more than {QUEUE_MAX} alerts waiting for the webhook")
        self._queue.append(change)
        self._ready.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
            await self._deliver(self._queue[0])
            if self._queue:
                self._queue.popleft()

    async def _deliver(self, change: Change) -> None:
        began, delay = self.clock(), BACKOFF_S[0]
        while True:
            url = self.url
            if not url:
                return  # the webhook was switched off meanwhile
            body, headers = payload(self.fmt, change, self.host)
            try:
                status = await self.post(url, body, headers)
                problem = None if 200 <= status < 300 else f"answered {status}"
            except Exception as err:  # any failure of the far end is a failed delivery, never ours
                problem = scrub(str(err), url) or type(err).__name__
            if problem is None:
                return
            if self.clock() - began >= GIVE_UP_AFTER_S:
                self.log.error("alert_not_delivered", condition=change.alert.condition, state=change.state,
                               webhook=redact(url), error=problem, reason=f"gave up after {GIVE_UP_AFTER_S:g} s")
                return
            self.log.warning("alert_delivery_failed", condition=change.alert.condition, state=change.state,
                             webhook=redact(url), error=problem, retry_in_s=delay)
            await self.sleep(delay)
            delay = min(BACKOFF_S[1], delay * 2)
