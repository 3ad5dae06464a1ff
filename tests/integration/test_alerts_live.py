"""Alerts on a live stack: `alert` log events firing and resolved, and the webhook's POSTs to a
local receiver, never an outside host; the webhook's secret never in the log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Receiver, Stack, wait_for


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([])
    yield r
    r.server.shutdown()


def alerting(stack: Stack, receiver: Receiver, fmt: str = "json", extra: str = "") -> str:
    return stack.default_config() + f'\n[alerts]\nwebhook = "{receiver.url}"\nformat = "{fmt}"\n{extra}'


def posts(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(body) for _, _, body in receiver.got]


def test_a_config_error_fires_once_and_resolves_once(make_stack: Any, receiver: Receiver) -> None:
    stack = make_stack()
    good = alerting(stack, receiver)
    stack.write_config(good)
    stack.start()
    stack.write_config(good.replace("drain_timeout = 5", "drain_timeout = -5"))
    firing = wait_for(lambda: [p for p in posts(receiver) if p["state"] == "firing"], what="the firing POST")
    assert firing[0]["condition"] == "config_error" and "proxy.drain_timeout" in firing[0]["message"]
    stack.write_config(good.replace("drain_timeout = 5", "drain_timeout = -6"))   # still broken: no new message
    wait_for(lambda: len(stack.events("config_error")) >= 2, what="the second broken file read")
    stack.write_config(good)
    wait_for(lambda: [p for p in posts(receiver) if p["state"] == "resolved"], what="the resolved POST")
    assert [(p["condition"], p["state"]) for p in posts(receiver)] == [("config_error", "firing"), ("config_error", "resolved")]
    events = stack.events("alert")
    assert [(e["condition"], e["state"]) for e in events] == [("config_error", "firing"), ("config_error", "resolved")]
    assert "secret-topic-42" not in stack.log_file.read_text()


def test_a_client_probing_is_an_alert(make_stack: Any, receiver: Receiver) -> None:
    stack = make_stack()
    stack.write_config(alerting(stack, receiver, "slack", "refusals_per_minute = 5\n"))
    stack.start()
    with httpx.Client(timeout=10) as client:
        for path in ("/api/pull", "/api/delete", "/etc/passwd", "/api/create", "/admin", "/api/push"):
            assert client.post(stack.url(path), json={}).status_code == 403
    message = wait_for(lambda: [p for p in posts(receiver)], what="the slack POST")[0]
    assert set(message) == {"text"} and "probing" in message["text"] and "firing" in message["text"]
    assert stack.events("alert", condition="probing", state="firing")


def test_an_engine_that_cannot_start_is_fatal_and_an_alert(make_stack: Any, receiver: Receiver) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_CRASH": "1"})
    stack.write_config(alerting(stack, receiver, "ntfy"))
    stack.start(wait=False)
    wait_for(lambda: receiver.got, what="the ntfy POST")
    path, headers, body = receiver.got[0]
    assert path == "/secret-topic-42" and headers["Title"].endswith("child_fatal (ollama) firing")
    assert headers["Priority"] == "urgent" and body.decode().startswith("ollama is FATAL")
