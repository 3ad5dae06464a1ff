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
