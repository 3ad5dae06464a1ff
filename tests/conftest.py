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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of each of its stacks' logs: the events that explain a
    failure seen once in a full run are gone with the stack's folder otherwise."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for stack in getattr(item, "ai_server_stacks", []):
            report.sections.append((f"ai-server log of {stack.root.name} (last {LOG_TAIL} lines)", stack.log_tail(LOG_TAIL)))


LOG_TAIL = 60


@pytest.fixture
def make_stack(request: pytest.FixtureRequest) -> Any:
    stacks: list[Stack] = []
    request.node.ai_server_stacks = stacks

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
