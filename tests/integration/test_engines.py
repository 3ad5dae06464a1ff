"""Engines: loopback proven by audit, warm-up, graceful restart (drain)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import psutil
import pytest

from conftest import Stack, wait_for


def listening_on(port: int) -> list[str]:
    return [f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def test_engine_binding_everywhere_is_caught_killed_and_fatal(make_stack) -> None:
    # A stand-in that ignores OLLAMA_HOST and listens on 0.0.0.0, as a misconfigured engine might.
    stack = make_stack(engine_env={"FAKE_OLLAMA_BIND_ALL": "1"})
    stack.start(wait=False)
    wait_for(lambda: stack.log_file.exists() and stack.events("state", process="ollama", to="FATAL"), 20, what="FATAL")
    engine = next(c for c in stack.status()["children"] if c["name"] == "ollama")
    assert engine["state"] == "FATAL"
    assert f"listens on 0.0.0.0:{stack.engine_port}" in engine["description"]
    assert engine["description"].startswith("security: engine not on loopback only")
    security = stack.events("security", process="ollama")
    assert len(security) == 1 and security[0]["level"] == "error"
    assert listening_on(stack.engine_port) == []  # killed: nothing left listening
    assert "security" in stack.cli("status").stdout
    assert stack.cli("status").returncode == 3


def stream_chat(stack: Stack, out: dict) -> None:
    body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=60) as response:
            out["lines"] = [l for l in response.iter_lines() if l.startswith("data: ")]
        out["ended"] = time.time()
    except httpx.HTTPError as err:
        out["error"] = repr(err)


def test_restart_drains_then_lets_waiting_requests_through(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKEN_DELAY": "0.05", "FAKE_OLLAMA_TOKENS": "60"})
    stack.start()
    old_pid = stack.child("ollama")["pid"]
    streamed: dict = {}
    streamer = threading.Thread(target=stream_chat, args=(stack, streamed))
    streamer.start()
    wait_for(lambda: any(r["target"] == "/v1/chat/completions" for r in stack.engine_requests()), 10, what="stream started")
    restart: dict = {}
    restarter = threading.Thread(target=lambda: restart.update(result=stack.cli("restart", "ollama")))
    restarter.start()
    wait_for(lambda: stack.events("hold"), 10, what="requests held")
    during = httpx.get(stack.url("/api/version"), timeout=30)  # sent while draining: waits, then served
    streamer.join(30)
    restarter.join(60)
    assert restart["result"].returncode == 0, restart["result"].stderr
    # The generation in flight finished intact, on the old engine ...
    assert "error" not in streamed and streamed["lines"][-1] == "data: [DONE]" and len(streamed["lines"]) == 62
    # ... and the request that arrived meanwhile succeeded, on the new one.
    assert during.status_code == 200
    new_pid = stack.child("ollama")["pid"]
    assert new_pid != old_pid
    served = [r for r in stack.engine_requests() if r["target"] == "/api/version"]
    assert served[-1]["pid"] != old_pid
    drained = stack.events("drained")[-1]
    stopping = stack.events("state", process="ollama", to="STOPPING")[-1]
    assert drained["timestamp"] <= stopping["timestamp"]
    assert stack.events("release")


def test_requests_wait_while_a_crashed_engine_comes_back(stack: Stack) -> None:
    import os
    import signal
    old = stack.child("ollama")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: stack.events("hold"), 10, what="held after the crash")
    answer = httpx.get(stack.url("/api/tags"), timeout=30)  # no 503: it waits for the engine
    assert answer.status_code == 200
    assert stack.child("ollama")["pid"] != old
