"""HAProxy's access log as it arrives: datagrams on a unix socket, each line parsed once
(haproxy/logfmt.py) and handed to the supervisor, which publishes it as a request record
(observe/records.py).

HAProxy sends and forgets: a slow reader makes it drop log lines, never hold up a request.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_server.base import logs
from ai_server.haproxy.logfmt import parse_log
from ai_server.observe.records import Ended, Record

# Room for bursts; past it HAProxy drops log lines rather than waiting for us.
RECEIVE_BUFFER = 1 << 20
OnFields = Callable[[dict[str, Any]], None]


def ended(fields: dict[str, Any], route: str, now: float) -> Ended:
    """The record of a request HAProxy logged (`fields`, from logfmt.parse_log) as it ended
    `now` (epoch seconds), having matched the allowlist rule `route`."""
    total = fields.get("t_total_ms")
    received = now - (total / 1000 if isinstance(total, int) and total > 0 else 0.0)
    return Ended(
        id="", client=str(fields["who"]), address=str(fields["client"]), port=fields["client_port"],  # type: ignore[arg-type]
        method=str(fields["method"]), path=str(fields["path"]), query=fields["query"], route=route,  # type: ignore[arg-type]
        model=fields["model"], node=fields["node"], priority=fields["priority"], status=fields["status"],  # type: ignore[arg-type]
        received_at=received, ended_at=now, forwarded=bool(fields["forwarded"]), queued=bool(fields["queue"]),
        bytes_in=fields["bytes_in"], bytes_out=fields["bytes_out"], termination=str(fields["termination"]),  # type: ignore[arg-type]
        t_request_ms=fields["t_request_ms"], t_queue_ms=fields["t_queue_ms"], t_connect_ms=fields["t_connect_ms"],  # type: ignore[arg-type]
        t_response_ms=fields["t_response_ms"], t_total_ms=fields["t_total_ms"])  # type: ignore[arg-type]


def log_request(record: Record) -> None:
    """The `request` log event: a subscriber of the supervisor's RecordBus."""
    if isinstance(record, Ended):
        logs.get().info("request", process="haproxy", **record.log_fields())


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_fields: OnFields) -> None:
        self.on_fields = on_fields

    def datagram_received(self, data: bytes, addr: Any) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            fields = parse_log(line)
            if fields is not None:  # HAProxy's other notices are on its stderr too
                self.on_fields(fields)


async def listen(path: Path, on_fields: OnFields) -> asyncio.DatagramTransport:
    """The socket HAProxy logs to (mode 0600 from birth); each request's fields to `on_fields`."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: _Receiver(on_fields), sock=sock)
    return transport
