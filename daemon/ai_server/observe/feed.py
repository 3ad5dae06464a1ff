"""The requests the dashboard shows: the last 200, and the generations in progress (pure, with an
injectable clock).

A RecordBus subscriber (`feed.record`), fed HAProxy's `live` table too. A generation appears when
it starts: a Started record (by request id), or, until those flow, when the supervisor sees it in
HAProxy's `live` table (client, model, when it began, from which address and port). Its Ended
record fills it in (status, tokens, GPU-seconds, timings), matched by id, else by address and
port: a connection carries one request at a time. Short requests may end before they are ever
seen in progress: their record simply adds a finished row.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ai_server.observe.records import Ended, Record, Started

KEEP = 200
# An entry gone from the live table whose record never came (a HAProxy worker killed with -9
# writes no line for what it carried): after this long its row is closed as "not logged".
UNLOGGED_AFTER_S = 5.0


@dataclass(frozen=True)
class InFlight:
    who: str
    model: str | None
    started: float          # seconds since the epoch
    address: str
    port: int


def parse_live(key: str) -> InFlight | None:
    """One key of HAProxy's live table: client|model|start ms|address|port."""
    parts = key.split("|")
    if len(parts) != 5 or not parts[2].isdigit() or not parts[4].isdigit():
        return None
    who, model, started, address, port = parts
    return InFlight(who or "unknown", model or None, int(started) / 1000, address, int(port))


Row = dict[str, Any]


class Feed:
    def __init__(self, keep: int = KEEP, clock: Callable[[], float] = time.time) -> None:
        self.keep, self.clock = keep, clock
        self.rows: OrderedDict[str, Row] = OrderedDict()       # id -> row, oldest first
        self._pending: dict[tuple[str, int], str] = {}         # (address, port) -> id of a row in progress
        self._by_request: dict[str, str] = {}                  # request id -> id of a row in progress
        self._started_records = False                          # Started records flow: no need of the live table
        self._gone: dict[str, float] = {}                      # id -> when it left the live table
        self._ended: dict[tuple[str, int], float] = {}         # (address, port) -> when its last record came
        self._changed: OrderedDict[str, None] = OrderedDict()
        self._next = 0

    def _add(self, row: Row) -> Row:
        self._next += 1
        row["id"] = f"r{self._next}"
        self.rows[row["id"]] = row
        while len(self.rows) > self.keep:
            old, _ = self.rows.popitem(last=False)
            self._changed.pop(old, None)
        self._changed[row["id"]] = None
        return row

    def record(self, record: Record) -> None:
        if isinstance(record, Started):
            self.started(record)
        else:
            self.ended(record)

    def started(self, record: Started) -> None:
        self._started_records = True
        if record.id in self._by_request:
            return
        row = self._add({"started": record.started_at, "who": record.client, "model": record.model,
                         "node": record.node, "address": None, "status": None, "path": record.route})
        self._by_request[record.id] = row["id"]

    def in_flight(self, now_live: Iterable[InFlight]) -> None:
        """What HAProxy has in progress now: new generations become rows; rows whose entry left
        without a record are closed after a while."""
        if self._started_records:
            return
        now = self.clock()
        seen: set[tuple[str, int]] = set()
        for item in now_live:
            key = (item.address, item.port)
            seen.add(key)
            # An entry still counted for a moment after its record came: already finished.
            if key in self._pending or self._ended.get(key, 0.0) >= item.started:
                continue
            row = self._add({"started": item.started, "who": item.who, "model": item.model, "node": None,
                             "address": item.address, "status": None})
            self._pending[key] = row["id"]
        for key, row_id in list(self._pending.items()):
            if key in seen:
                self._gone.pop(row_id, None)
                continue
            left = self._gone.setdefault(row_id, now)
            if now - left >= UNLOGGED_AFTER_S:
                del self._pending[key]
                self._gone.pop(row_id, None)
                closed = self.rows.get(row_id)
                if closed is not None:
                    closed["status"] = "unlogged"
                    self._changed[row_id] = None
        for key, when in list(self._ended.items()):
            if now - when > 60:
                del self._ended[key]

    def ended(self, record: Ended) -> Row:
        """A request finished: its row in progress filled in, or a new row."""
        now = self.clock()
        key = (record.address, record.port or 0)
        self._ended[key] = now
        total, metered = record.t_total_ms, record.metered
        first = record.t_response_ms if record.t_response_ms is not None and record.t_response_ms >= 0 else None
        done = {"who": record.client, "model": record.model, "node": record.node, "status": record.status,
                "method": record.method, "path": record.path,
                "duration_ms": total if total is not None and total >= 0 else None,
                # Until a generation is metered, HAProxy's time to the first response byte.
                "ttft_ms": record.ttft_ms if metered else first,
                "input_tokens": record.input_tokens if metered else None,
                "output_tokens": record.output_tokens if metered else None,
                "gpu_s": record.gpu_s if metered else None, "estimated": record.usage_source == "estimated"}
        by_request = self._by_request.pop(record.id, None) if record.id else None
        pending = self._pending.pop(key, None)
        row_id = by_request or pending
        row = self.rows.get(row_id) if row_id is not None else None
        if row is None or row_id is None:
            return self._add({"started": record.received_at, "address": record.address, **done})
        self._gone.pop(row_id, None)
        row.update({k: v for k, v in done.items() if v is not None or k not in ("who", "model")})
        self._changed[row["id"]] = None
        return row

    def calling(self) -> list[Row]:
        """The generations in progress, oldest first."""
        ids = [*self._pending.values(), *self._by_request.values()]
        return [self.rows[i] for i in ids if i in self.rows]

    def changed(self) -> list[Row]:
        """Rows added or filled in since the last call, oldest first."""
        out = [self.rows[i] for i in self._changed if i in self.rows]
        self._changed.clear()
        return out

    def recent(self, who: str | None = None) -> list[Row]:
        """The last rows, newest first; only `who`'s when given."""
        return [r for r in reversed(self.rows.values()) if who is None or r.get("who") == who]
