"""The `request` log event: one per request HAProxy answered, from its access log (read from
the request log file by observe/usage/metering.py, published as request records)."""

from __future__ import annotations

from ai_server.base import logs
from ai_server.observe.records import Ended, Record


def log_request(record: Record) -> None:
    """A subscriber of the supervisor's RecordBus."""
    if isinstance(record, Ended):
        logs.get().info("request", process="haproxy", **record.log_fields())
