"""The supervisor object in-process: what a reload changes, without running children."""

from __future__ import annotations

import asyncio

from ai_server.base.paths import Paths
from ai_server.children.context import Context
from ai_server.children.proxy import START_TIMEOUT
from ai_server.daemon.supervisor import Supervisor
from harness import Stack


async def prepared(stack: Stack) -> Supervisor:
    paths = Paths(stack.config_dir, stack.state_dir, stack.state_dir / "logs")
    return await Supervisor.prepare(Context.of(paths, stack.env))


def test_reload_keeps_each_childs_own_start_timeout(make_stack) -> None:
    """A reload used to give HAProxy the engine's start_timeout."""
    stack = make_stack()

    async def scenario() -> tuple[float, float, dict]:
        supervisor = await prepared(stack)
        stack.write_config(stack.default_config().replace("start_timeout = 20", "start_timeout = 7"))
        answer = await supervisor.reload("test")
        return supervisor.proxy.child.start_timeout, supervisor.engine.child.start_timeout, answer

    proxy_timeout, engine_timeout, answer = asyncio.run(scenario())
    assert answer["ok"] and answer["changed"] == []
    assert engine_timeout == 7
    assert proxy_timeout == START_TIMEOUT
