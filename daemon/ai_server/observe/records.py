"""Request records, and the one place in the supervisor where they are published.

Two records per generation, one per any other request:

    Started   a generation took an engine slot (it left the queue): who, what, where, since when.
              The dashboard's "who is calling now" and nothing else depends on it.
    Ended     HAProxy finished a request: every request, refused and cut ones included, with
              what it cost when it was a generation or an embedding (tokens, GPU-seconds, time
              to first token). This is the `request` log event, the metrics, the ledger's row.

Both come from HAProxy (its access log and the metering filter, read by the supervisor) and
hold no prompt or response text. The ledger is fed by the reader itself, in the same SQLite
transaction as its place in HAProxy's log, and so is not a subscriber; everything else is:

    bus = RecordBus()
    unsubscribe = bus.subscribe(lambda record: ...)   # Started | Ended, on the event loop

A subscriber runs on the supervisor's event loop, in subscription order, and must return
quickly (hand slow work to a queue or a thread). One that raises is logged and skipped; the
others still get the record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ai_server.base import logs

# usage_source
ENGINE = "engine"          # the engine's own counts
ESTIMATED = "estimated"    # the engine reported none (or nonsense): estimated, with a reason


@dataclass(frozen=True)
class Started:
    id: str                  # HAProxy's request id; the Ended record of the same request has it too
    client: str              # a clients.toml name, or "unknown"
    model: str | None
    node: str | None         # on a front, the node serving it
    route: str               # the allowlist rule it matched (its path)
    priority: str            # interactive | normal | batch
    started_at: float        # epoch seconds: when it took the slot


@dataclass(frozen=True)
class Ended:
    id: str
    client: str              # a clients.toml name, or "unknown" (the log's `who`)
    address: str             # where it came from (the log's `client`)
    port: int | None
    method: str
    path: str
    query: str | None
    route: str               # the allowlist rule it matched (its path), else the path itself
    model: str | None
    node: str | None
    priority: str | None
    status: int | None
    received_at: float       # epoch seconds: the proxy had the request's headers
    ended_at: float          # epoch seconds: the last byte of the answer (or the cut)
    forwarded: bool          # it reached an engine (or a node)
    queued: bool             # a generation: it went through the queue for a slot
    bytes_in: int | None
    bytes_out: int | None
    termination: str         # HAProxy's termination state (e.g. "----", "CD--")
    # HAProxy's timings in ms (-1 or None: did not happen): headers received, queue, connect,
    # first response byte, the whole exchange.
    t_request_ms: int | None
    t_queue_ms: int | None
    t_connect_ms: int | None
    t_response_ms: int | None
    t_total_ms: int | None
    # Metering, for generations and embeddings that reached an engine (usage_source set):
    input_tokens: int = 0
    output_tokens: int = 0
    gpu_s: float = 0.0              # time it held an engine slot
    ttft_ms: float | None = None    # from the request to the first body bytes carrying a token
    cut: str | None = None          # None, or who ended it early: client | max_seconds | engine | proxy
    usage_source: str | None = None    # engine | estimated; None: not metered
    estimated_reason: str | None = None

    @property
    def metered(self) -> bool:
        """A generation or embedding that reached an engine: it is in the ledger."""
        return self.usage_source is not None

    def log_fields(self) -> dict[str, Any]:
        """The `request` log event's fields (names as interface.md has them: `client` is the
        address, `who` the client's name)."""
        fields: dict[str, Any] = {
            **({"request_id": self.id} if self.id else {}), "method": self.method, "path": self.path, "query": self.query,
            "status": self.status, "client": self.address, "client_port": self.port, "who": self.client,
            "model": self.model, "priority": self.priority, "forwarded": self.forwarded, "queue": self.queued,
            "node": self.node, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "termination": self.termination,
            "t_request_ms": self.t_request_ms, "t_queue_ms": self.t_queue_ms, "t_connect_ms": self.t_connect_ms,
            "t_response_ms": self.t_response_ms, "t_total_ms": self.t_total_ms,
        }
        if self.metered:
            fields.update(input_tokens=self.input_tokens, output_tokens=self.output_tokens, gpu_s=self.gpu_s,
                          ttft_ms=self.ttft_ms, usage_source=self.usage_source)
            if self.estimated_reason:
                fields["estimated_reason"] = self.estimated_reason
            if self.cut:
                fields["cut"] = self.cut
        return fields


Record = Started | Ended
Subscriber = Callable[[Record], None]


class RecordBus:
    """Publish/subscribe for request records, in process, on the event loop."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._log = logs.get()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Receive every record from now on; the function returned unsubscribes."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
        return unsubscribe

    def publish(self, record: Record) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(record)
            except Exception:  # one broken subscriber must not cost the others their records
                self._log.exception("subscriber_failed", subscriber=getattr(subscriber, "__qualname__", repr(subscriber)))
