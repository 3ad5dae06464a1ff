"""The queue in front of the engine, in the real HAProxy: slots, priorities, backpressure; the
load in `status`; /metrics checked by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from ai_server.access import clients
from harness import Stack, finish, wait_for

TOKENS = {name: "ais_" + name[0] * 43 for name in ("inter", "norm", "bat")}
CLIENTS = "\n".join(f'[[client]]\nname = "{name}"\ntoken_sha256 = "{clients.token_hash(token)}"\npriority = "{priority}"\n'
                    for (name, token), priority in zip(TOKENS.items(), ("interactive", "normal", "batch"), strict=True))
STREAM = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def queue_stack(make_stack: Any, parallel: int, proxy_extra: str = "") -> Stack:
    """A stack whose engine slots the tests fill with held generations (harness: Stack.hold)."""
    stack = make_stack()
    stack.write_config(stack.default_config().replace("[engine]\n", f"[engine]\nparallel = {parallel}\n")
                       .replace("[proxy]\n", f"[proxy]\n{proxy_extra}"))
    (stack.config_dir / "clients.toml").write_text(CLIENTS)
    stack.start()
    stack.hold()
    return stack


def generate(stack: Stack, who: str, out: list[tuple[str, int, float]], body: dict | None = None) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        try:
            with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body or STREAM, timeout=60,
                              headers={"Authorization": f"Bearer {TOKENS[who]}"}) as response:
                response.read()
                out.append((who, response.status_code, time.monotonic() - started))
        except httpx.HTTPError as err:
            out.append((who, -1, repr(err)))  # type: ignore[arg-type]
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def load(stack: Stack) -> dict[str, Any]:
    return stack.status()["load"]


def queued(stack: Stack) -> int:
    return sum(load(stack)["queued"].values())


def engine_order(stack: Stack) -> list[str]:
    """Who reached the engine's chat endpoint, in order (the token is gone by then: the client
    is told by its body's first message)."""
    return [json.loads(r["body"])["messages"][0]["content"] for r in stack.engine_requests()
            if r["target"] == "/v1/chat/completions"]


def tagged(who: str) -> dict:
    return {**STREAM, "messages": [{"role": "user", "content": who}]}


def test_the_engine_never_runs_more_than_its_slots_and_cheap_calls_never_wait(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=2)
    engine = psutil.Process(stack.child("ollama")["pid"])
    assert engine.environ()["OLLAMA_NUM_PARALLEL"] == "2"  # told as many as the proxy lets through
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "norm", done) for _ in range(6)]
    wait_for(lambda: queued(stack) == 4, what="four waiting")
    stack.wait_held(2)
    queued_at = time.monotonic()
    # The four wait in the proxy: the engine has seen only the two it runs.
    assert len([r for r in stack.engine_requests() if r["target"] == "/v1/chat/completions"]) == 2
    # Cheap calls answer while both slots stay taken (held: they could never be freed for them).
    for path in ("/api/tags", "/v1/models", "/api/version"):
        assert httpx.get(stack.url(path), timeout=5).status_code == 200
    assert httpx.post(stack.url("/api/show"), json={"model": "smollm2:135m"}, timeout=5).status_code == 200
    assert stack.engine_load()["held"] == 2 and queued(stack) == 4
    held_for = time.monotonic() - queued_at
    stack.release()
    finish(*threads)
    assert [status for _, status, _ in done] == [200] * 6
    assert stack.engine_load()["peak"] == 2
    waited = wait_for(lambda: (w := [e["t_queue_ms"] for e in stack.events("request", path="/v1/chat/completions")])
                      and len(w) == 6 and w, what="six request events")
    # Four waited in the proxy's queue for at least as long as the test held the slots.
    assert len([ms for ms in waited if ms >= int(held_for * 1000) - 2]) >= 4, (waited, held_for)  # ms rounding
    tags = wait_for(lambda: stack.events("request", path="/api/tags"), what="the /api/tags event")
    assert all(not e["queue"] for e in tags)


def test_queued_requests_are_served_interactive_then_normal_then_batch(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=1)
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "norm", done, tagged("first"))]
    stack.wait_held(1)
    for number, who in enumerate(("bat", "bat", "norm", "inter", "norm", "inter")):
        threads.append(generate(stack, who, done, tagged(f"{who}-{number}")))
        wait_for(lambda n=number + 1: queued(stack) == n, what=f"{number + 1} waiting")
    snapshot = load(stack)
    assert snapshot["queued"] == {"interactive": 2, "normal": 2, "batch": 2}
    assert snapshot["clients"] == {"inter": 2, "norm": 3, "bat": 2}
    stack.release()
    finish(*threads)
    assert engine_order(stack) == ["first", "inter-3", "inter-5", "norm-2", "norm-4", "bat-0", "bat-1"]


def test_a_batch_request_is_not_passed_forever(make_stack) -> None:
    """priority_window = 1 s: a batch request that has waited over 2 s goes before an
    interactive one that arrives then."""
    stack = queue_stack(make_stack, parallel=1, proxy_extra="priority_window = 1\n")
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "norm", done, tagged("first"))]
    stack.wait_held(1)
    threads.append(generate(stack, "bat", done, tagged("old-batch")))
    wait_for(lambda: load(stack)["oldest_wait_s"] >= 3, interval=0.2, what="the batch request waiting 3 s")
    threads.append(generate(stack, "inter", done, tagged("late-interactive")))
    wait_for(lambda: queued(stack) == 2, what="both waiting")
    stack.release()
    finish(*threads)
    assert engine_order(stack) == ["first", "old-batch", "late-interactive"]


def test_a_long_wait_gets_503_with_retry_after(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=1, proxy_extra="queue_timeout = 1\n")
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "norm", done, tagged("first"))]
    stack.wait_held(1)
    timed = httpx.post(stack.url("/v1/chat/completions"), json=tagged("timed-out"), timeout=30)
    assert timed.status_code == 503 and timed.headers["retry-after"] == "5"
    assert timed.json()["queue"] == "generate" and timed.json()["status"] == 503
    stack.release()
    finish(*threads)
    assert engine_order(stack) == ["first"]  # the proxy answered


def test_a_full_queue_gets_503_with_retry_after(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=1, proxy_extra="queue_max = 2\n")
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "norm", done, tagged("first"))]
    stack.wait_held(1)
    threads += [generate(stack, "norm", done, tagged(f"waiting-{i}")) for i in range(2)]
    wait_for(lambda: queued(stack) == 2, what="two waiting")
    full = httpx.post(stack.url("/v1/chat/completions"), json=tagged("no-room"), timeout=30)
    assert full.status_code == 503 and full.headers["retry-after"] == "5"
    message = "the queue for an engine slot is full (proxy.queue_max) (reason: queue_full, client: unknown)"
    assert full.json() == {"error": {"code": "queue_full", "type": "overloaded_error", "param": None, "message": message},
                           "client": "unknown", "reason": "queue_full", "queue": "generate", "depth": 2, "status": 503}
    stack.release()
    finish(*threads)
    assert [status for _, status, _ in done] == [200] * 3
    assert sorted(engine_order(stack)) == ["first", "waiting-0", "waiting-1"]  # no-room: the proxy answered


def test_status_shows_the_load(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=1)
    done: list[tuple[str, int, float]] = []
    threads = [generate(stack, "bat", done)]
    stack.wait_held(1)
    threads.append(generate(stack, "inter", done))
    wait_for(lambda: queued(stack) == 1 and load(stack)["oldest_wait_s"] >= 1, interval=0.2, what="one waiting a second")
    human = stack.cli("status").stdout
    assert "engine: 1 of 1 slots in use; queued: interactive 1, normal 0, batch 0; oldest wait" in human
    assert "clients: bat 1, inter 1" in human
    stack.release()
    finish(*threads)
    assert [status for _, status, _ in done] == [200, 200]


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian: prometheus) not installed")
def test_metrics_pass_promtool_and_count_what_happened(make_stack) -> None:
    stack = queue_stack(make_stack, parallel=1)
    stack.release()
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    done: list[tuple[str, int, float]] = []
    for thread in [generate(stack, who, done) for who in ("inter", "bat")]:
        finish(thread)
    httpx.get(stack.url("/api/pull"), timeout=5)
    stack.write_config(stack.default_config() + "\n[log]\nmax_mb = -1\n")  # a failed reload
    wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error")
    wait_for(lambda: 'route="other"' in httpx.get(url, timeout=5).text, what="the refused request counted")
    text = httpx.get(url, timeout=5).text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for expected in ('ai_server_child_up{name="haproxy"} 1', 'ai_server_child_restarts_total{name="ollama"} 0',
                     'ai_server_requests_total{client="inter",route="/v1/chat/completions",code="200"} 1',
                     'ai_server_requests_total{client="unknown",route="other",code="403"} 1',
                     'ai_server_queue_depth{class="batch"} 0', "ai_server_inflight 0", "ai_server_engine_slots 1",
                     'ai_server_config_reloads_total{result="error"} 1',
                     'ai_server_queue_wait_seconds_count{class="batch"} 1',
                     'ai_server_request_duration_seconds_bucket{route="/v1/chat/completions",le="+Inf"} 2',
                     'ai_server_time_to_first_byte_seconds_count{route="/v1/chat/completions"} 2'):
        assert expected in text, expected
    assert "ai_server_audit_age_seconds" in text and "ai_server_proxy_requests_total" in text
    assert httpx.get(url.replace("/metrics", "/other"), timeout=5).status_code == 404
    listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == stack.metrics_port}
    assert listening == {"127.0.0.1"}
