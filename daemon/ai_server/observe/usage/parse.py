"""Request log lines as request records (pure): an access-log line is an Ended record, with what
it cost when it was a metered generation; a metering filter's start line is a Started record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ai_server.haproxy.logfmt import parse_log, parse_start
from ai_server.haproxy.spec import GENERATION_PATHS
from ai_server.observe.records import Ended, Started
from ai_server.observe.usage import meter

METERED_PATHS = frozenset(GENERATION_PATHS.split())
NO_SERVER = "<NOSRV>"

# HAProxy's termination state, first letter: who ended the stream early.
_CUT_BY = {"C": "client", "c": "client", "S": "engine", "s": "engine", "D": "engine", "P": "proxy", "I": "proxy",
           "R": "proxy", "K": "proxy"}


def record(line: str, route_of: Callable[[str], str], now: float) -> Started | Ended | None:
    """The record a request log line holds, or None (HAProxy's own notices, the file's header)."""
    if line.startswith("ai-server-start "):
        fields = parse_start(line)
        return None if fields is None else started(fields, route_of)
    fields = parse_log(line)
    return None if fields is None else ended(fields, route_of, now)


def started(fields: dict[str, Any], route_of: Callable[[str], str]) -> Started:
    return Started(id=fields["id"], client=fields["who"], model=fields["model"], node=fields["node"],
                   route=route_of(fields["path"]), priority=fields["priority"], started_at=fields["t0_us"] / 1e6)


def _ms(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def cut_by(termination: str, reading: meter.Reading | None) -> str | None:
    """Who ended a metered stream early, or None when it ran to its end."""
    if reading is not None and "cut" in reading.flags:
        return "max_seconds"
    who = _CUT_BY.get(termination[:1])
    if who == "engine" and termination[:1] == "s" and reading is not None and reading.max_ms:
        return "max_seconds"    # the server timeout stood in for the client's max_seconds
    return who


def ended(fields: dict[str, Any], route_of: Callable[[str], str], now: float) -> Ended:
    path = fields["path"]
    total, headers, queued = _ms(fields["t_total_ms"]), _ms(fields["t_request_ms"]), _ms(fields["t_queue_ms"])
    t_in = fields["t_in_us"]
    received = t_in / 1e6 if isinstance(t_in, int) else now - (total or 0) / 1000
    reading = meter.read(fields["meter"])
    ended_at = reading.t2 / 1e6 if reading is not None and reading.t2 else received + max(0, (total or 0) - (headers or 0)) / 1000
    record = Ended(
        id=fields["id"], client=fields["who"], address=fields["client"], port=fields["client_port"], method=fields["method"],
        path=path, query=fields["query"], route=route_of(path), model=fields["model"], node=fields["node"],
        priority=fields["priority"], status=fields["status"], received_at=received, ended_at=ended_at,
        forwarded=fields["forwarded"], queued=fields["queue"], bytes_in=fields["bytes_in"], bytes_out=fields["bytes_out"],
        termination=fields["termination"], t_request_ms=fields["t_request_ms"], t_queue_ms=fields["t_queue_ms"],
        t_connect_ms=fields["t_connect_ms"], t_response_ms=fields["t_response_ms"], t_total_ms=fields["t_total_ms"])
    if path not in METERED_PATHS or fields["server"] == NO_SERVER or not fields["forwarded"]:
        return record
    cut = cut_by(fields["termination"], reading)
    usage = meter.decide(path, reading, fields["status"], fields["bytes_in"] or 0, cut is not None)
    if reading is not None and reading.t0 and reading.t2:
        gpu_s = max(0, reading.t2 - reading.t0) / 1e6
    else:   # no filter: the time from leaving the queue to the end, as HAProxy timed it
        gpu_s = max(0, (total or 0) - (headers or 0) - (queued or 0)) / 1000
    ttft = (reading.t1 - t_in) / 1000 if reading is not None and reading.t1 and isinstance(t_in, int) else None
    return replace(record, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, gpu_s=round(gpu_s, 6),
                   ttft_ms=None if ttft is None or ttft < 0 else round(ttft, 3), cut=cut, usage_source=usage.source,
                   estimated_reason=usage.reason)
