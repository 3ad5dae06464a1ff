"""Request records and the bus every consumer subscribes to."""

from __future__ import annotations

from typing import Any

import pytest

from ai_server.observe.records import ENGINE, Ended, Record, RecordBus, Started


def started() -> Started:
    return Started(id="7-1", client="laptop", model="m:7b", node=None, route="/api/chat", priority="normal", started_at=1.0)


def test_every_subscriber_gets_every_record_even_when_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    bus = RecordBus()
    seen: list[Record] = []

    def broken(record: Record) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(seen.append)
    bus.publish(started())
    unsubscribe()
    bus.publish(started())
    assert seen == [started()]


def test_the_request_event_names_client_the_address_and_who_the_name() -> None:
    record = Ended(id="7-1", client="laptop", address="100.64.0.2", port=5000, method="POST", path="/api/chat", query=None,
                   route="/api/chat", model="m:7b", node=None, priority="normal", status=200, received_at=1.0, ended_at=2.0,
                   forwarded=True, queued=True, bytes_in=10, bytes_out=20, termination="----", t_request_ms=0,
                   t_queue_ms=0, t_connect_ms=0, t_response_ms=5, t_total_ms=1000)
    fields: dict[str, Any] = record.log_fields()
    assert (fields["client"], fields["who"]) == ("100.64.0.2", "laptop")
    assert "input_tokens" not in fields and not record.metered
    metered = Ended(**{**record.__dict__, "input_tokens": 3, "output_tokens": 4, "usage_source": ENGINE})
    assert metered.log_fields()["usage_source"] == "engine" and metered.log_fields()["input_tokens"] == 3
