"""Alert conditions on a fake clock, and the webhook's formats, retries and secrecy against a
local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ai_server.base import logs
from ai_server.observe.alerts import Alert, Alerts, Change, Rules, Seen
from ai_server.observe.records import Ended
from ai_server.observe.webhook import Deliverer, payload, redact, scrub
from harness import Receiver

RUNNING = (("ollama", "RUNNING", 0, "pid 1"), ("haproxy", "RUNNING", 0, "pid 2"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def ended(status: int, forwarded: bool = False, client: str = "unknown", address: str = "100.64.0.9") -> Ended:
    return Ended(id="", client=client, address=address, port=1, method="POST", path="/api/pull", query=None,
                 route="/api/pull", model=None, node=None, priority=None, status=status, received_at=0.0, ended_at=0.0,
                 forwarded=forwarded, queued=False, bytes_in=0, bytes_out=0, termination="----", t_request_ms=0,
                 t_queue_ms=0, t_connect_ms=0, t_response_ms=0, t_total_ms=0)


def engine(state: str, restarts: int = 0, description: str = "") -> tuple[tuple[str, str, int, str], ...]:
    return (("ollama", state, restarts, description), RUNNING[1])


def fired(changes: list[Change]) -> list[tuple[str, str, str]]:
    return [(c.alert.condition, c.alert.subject, c.state) for c in changes]


def test_fatal_fires_once_and_resolves_once() -> None:
    clock = Clock()
    alerts = Alerts(clock=clock)
    assert alerts.observe(Seen(RUNNING)) == []
    assert fired(alerts.observe(Seen(engine("FATAL", 0, "exited 5 times")))) == [("child_fatal", "ollama", "firing")]
    assert alerts.observe(Seen(engine("FATAL", 0, "another reason"))) == []   # open: not sent again
    assert alerts.open_alerts()[0]["message"] == "ollama is FATAL: another reason"
    assert fired(alerts.observe(Seen(RUNNING))) == [("child_fatal", "ollama", "resolved")]
    assert alerts.open_alerts() == []


def test_the_loopback_audit_is_its_own_alert() -> None:
    alerts = Alerts(clock=Clock())
    seen = Seen(engine("FATAL", 0, "security: engine not on loopback only: ollama (pid 8) listens on 0.0.0.0:11434"))
    changes = alerts.observe(seen)
    assert fired(changes) == [("loopback_audit", "ollama", "firing")]
    assert changes[0].alert.severity == "critical" and "0.0.0.0:11434" in changes[0].message


def test_a_restart_loop_is_n_restarts_in_m_minutes() -> None:
    clock = Clock()
    alerts = Alerts(Rules(restarts=3, restart_minutes=10), clock)
    assert alerts.observe(Seen(engine("RUNNING", 7))) == []    # restarts before we looked: the baseline
    for count in (8, 9):
        clock.now += 60
        assert alerts.observe(Seen(engine("RUNNING", count))) == []
    clock.now += 60
    assert fired(alerts.observe(Seen(engine("RUNNING", 10)))) == [("restart_loop", "ollama", "firing")]
    clock.now += 8 * 60 - 1                  # the first of the three is about to leave the window
    assert alerts.observe(Seen(engine("RUNNING", 10))) == []
    clock.now += 2
    assert fired(alerts.observe(Seen(engine("RUNNING", 10)))) == [("restart_loop", "ollama", "resolved")]


def test_a_node_down_and_back_up() -> None:
    alerts = Alerts(clock=Clock())
    assert alerts.observe(Seen(RUNNING, nodes=(("studio-1", "UP"), ("studio-2", "DRAIN")))) == []
    changes = alerts.observe(Seen(RUNNING, nodes=(("studio-1", "DOWN"),)))
    assert fired(changes) == [("node_down", "studio-1", "firing")]
    back = alerts.observe(Seen(RUNNING, nodes=(("studio-1", "UP"),)))
    assert fired(back) == [("node_down", "studio-1", "resolved")] and back[0].message == "node studio-1 is back up"


def test_quotas_at_80_and_100_percent() -> None:
    alerts = Alerts(clock=Clock())
    assert alerts.observe(Seen(RUNNING, quotas=(("kid", "tokens_per_day", 0.79),))) == []
    assert fired(alerts.observe(Seen(RUNNING, quotas=(("kid", "tokens_per_day", 0.8),)))) == [
        ("quota_warning", "kid tokens_per_day", "firing")]
    assert fired(alerts.observe(Seen(RUNNING, quotas=(("kid", "tokens_per_day", 1.2),)))) == [
        ("quota_exhausted", "kid tokens_per_day", "firing")]
    assert sorted(fired(alerts.observe(Seen(RUNNING, quotas=(("kid", "tokens_per_day", 0.0),))))) == [
        ("quota_exhausted", "kid tokens_per_day", "resolved"), ("quota_warning", "kid tokens_per_day", "resolved")]


def test_probing_is_20_refusals_a_minute_and_clears_under_half() -> None:
    clock = Clock()
    alerts = Alerts(Rules(refusals_per_minute=20), clock)
    refused = ended(403)
    for _ in range(19):
        alerts.record(refused)
        alerts.record(ended(403, forwarded=True, client="kid"))    # the engine's 403: not the proxy's
        alerts.record(ended(429, client="kid"))                    # load, not probing
        clock.now += 1
    assert alerts.observe(Seen(RUNNING)) == []
    alerts.record(refused)
    assert fired(alerts.observe(Seen(RUNNING))) == [("probing", "unknown (100.64.0.9)", "firing")]
    clock.now += 45                          # 15 of the 20 still within the minute: over half, still open
    assert alerts.observe(Seen(RUNNING)) == []
    clock.now += 20                          # none left
    assert fired(alerts.observe(Seen(RUNNING))) == [("probing", "unknown (100.64.0.9)", "resolved")]


def test_the_server_conditions() -> None:
    alerts = Alerts(clock=Clock())
    seen = Seen(RUNNING, config_error="ai-server.toml:3: proxy.port: must be a port", tls_problem="no MagicDNS name",
                ledger_problem="disk full")
    assert sorted(fired(alerts.observe(seen))) == [("config_error", "", "firing"), ("ledger", "", "firing"),
                                                   ("tls_renewal", "", "firing")]
    assert sorted(fired(alerts.observe(Seen(RUNNING)))) == [("config_error", "", "resolved"), ("ledger", "", "resolved"),
                                                           ("tls_renewal", "", "resolved")]


# -- the webhook -----------------------------------------------------------------------------

HOSTILE = "<!channel> <https://evil.example|click> & \r\nX-Injected: 1 \u202e"
CHANGE = Change(Alert("config_error", "", HOSTILE, "warning", 1_000_000.0), "firing", 1_000_030.0, HOSTILE)


def test_payloads_escape_what_they_carry() -> None:
    body, headers = payload("json", CHANGE, "mymac")
    data = json.loads(body)
    assert data["message"] == HOSTILE and data["state"] == "firing" and data["since"] == "1970-01-12T13:46:40Z"
    body, headers = payload("slack", CHANGE, "my<mac>")
    text = json.loads(body)["text"]
    assert "<!channel>" not in text and "<https:" not in text and "&lt;!channel&gt;" in text and "&amp;" in text
    assert "my&lt;mac&gt;" in text
    body, headers = payload("ntfy", CHANGE, "mymac\r\nX-Evil: 1")
    assert body.decode() == HOSTILE                      # the body is plain text, as sent
    assert all(0x20 <= ord(c) < 0x7F for v in headers.values() for c in v)
    assert headers["Priority"] == "high" and headers["Tags"] == "warning"


def test_redaction() -> None:
    assert redact("https://ntfy.sh/my-secret-topic?x=1") == "https://ntfy.sh/…"
    assert redact("https://user:pw@hooks.slack.com:8443/services/T/B/SECRET") == "https://hooks.slack.com:8443/…"
    assert "SECRET" not in scrub("failed for https://h/services/T/B/SECRET and /services/T/B/SECRET", "https://h/services/T/B/SECRET")


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []
    yield lambda statuses=(): made.append(Receiver(list(statuses))) or made[-1]
    for r in made:
        r.server.shutdown()


def test_deliveries_are_retried_with_backoff_in_order_and_never_log_the_secret(receiver: Any, tmp_path: Any) -> None:
    log_file = tmp_path / "log.jsonl"
    logs.configure(log_file)
    r = receiver([500, 503, 500])
    delays: list[float] = []

    async def run() -> None:
        async def fake_sleep(seconds: float) -> None:
            delays.append(seconds)

        deliverer = Deliverer("mymac", sleep=fake_sleep)
        deliverer.configure(r.url, "ntfy")
        resolved = Change(CHANGE.alert, "resolved", 1_000_060.0, "resolved: config_error")
        deliverer.send(CHANGE)
        deliverer.send(resolved)
        task = asyncio.create_task(deliverer.run())
        while len(r.got) < 5:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert delays == [1.0, 2.0, 4.0]
    assert [g[1]["Title"].endswith("firing") for g in r.got] == [True, True, True, True, False]
    assert r.got[-1][1]["Title"] == "ai-server on mymac: config_error resolved"
    text = log_file.read_text()
    assert text.count("alert_delivery_failed") == 3 and "secret-topic-42" not in text and "/…" in text


def test_a_webhook_that_never_answers_is_given_up_after_an_hour(tmp_path: Any) -> None:
    logs.configure(tmp_path / "log.jsonl")
    clock = Clock()
    tries = []

    async def run() -> None:
        async def refuse(url: str, body: bytes, headers: dict[str, str]) -> int:
            tries.append(url)
            raise OSError(f"connection refused to {url}")

        async def fake_sleep(seconds: float) -> None:
            clock.now += seconds

        deliverer = Deliverer("mymac", post=refuse, sleep=fake_sleep, clock=clock)
        deliverer.configure("https://ntfy.example/topic-secret", "json")
        await deliverer._deliver(CHANGE)

    asyncio.run(run())
    assert 10 < len(tries) < 30       # 1, 2, 4, ... 300, 300, ... for an hour
    text = (tmp_path / "log.jsonl").read_text()
    assert "alert_not_delivered" in text and "topic-secret" not in text


def test_sending_never_waits_and_bounds_its_queue(tmp_path: Any) -> None:
    logs.configure(tmp_path / "log.jsonl")
    deliverer = Deliverer("mymac")
    deliverer.send(CHANGE)                 # no webhook: nothing queued
    assert not deliverer._queue
    deliverer.configure("https://ntfy.example/t", "json")
    for _ in range(300):
        deliverer.send(CHANGE)
    assert len(deliverer._queue) == 256
    assert "alert_not_delivered" in (tmp_path / "log.jsonl").read_text()
