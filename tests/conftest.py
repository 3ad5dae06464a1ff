"""Fixtures: stacks (a real `ai-server run` with real HAProxy and the Ollama stand-in) that are
torn down after each test. The harness itself is harness.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stack, Tailnet, dispose, netns_lock, new_stack  # noqa: E402


@pytest.fixture
def make_stack() -> Any:
    stacks: list[Stack] = []

    def make(engine_env: dict[str, str] | None = None, config: str | None = None) -> Stack:
        stack = new_stack(engine_env, config)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        dispose(stack)


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    s = make_stack()
    s.start()
    return s


@pytest.fixture
def tailnet() -> Iterator[Tailnet]:
    with netns_lock():
        net = Tailnet()
        net.destroy()
        yield net
        net.destroy()
