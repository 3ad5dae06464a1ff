"""One child, driven directly: real processes, real signals, the daemon's mood."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from ai_server.base.paths import Paths
from ai_server.children.context import Context
from ai_server.children.process import Child, Role, Spec
from ai_server.children.states import DaemonMood, State
from ai_server.config import RestartPolicy

POLICY = RestartPolicy(startsecs=0.1, startretries=3, backoff_base=0.05, backoff_cap=0.1, stop_timeout=2)
NOWHERE = Path("/nonexistent")


def sleeper(mood: DaemonMood, transitions: list[tuple[str, str]] | None = None) -> Child:
    log = transitions if transitions is not None else []
    ctx = Context(Paths(NOWHERE, NOWHERE, NOWHERE), time.monotonic, mood=mood)
    return Child("sleeper", Role.ENGINE, lambda: Spec(argv=("sleep", "30"), stop_timeout=2), POLICY, ctx,
                 on_transition=lambda n, o, new, r: log.append((o.value, new.value)))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_during_a_spawn_stops_what_the_spawn_started() -> None:
    """A stop arriving between "STARTING" and the fork used to return at once without
    signalling anything: the process came up afterwards and ran on, untracked."""
    async def scenario() -> tuple[State, list[int]]:
        child = sleeper(DaemonMood())
        pids_before = {p.pid for p in psutil.Process().children()}
        start = asyncio.create_task(child.start("test"))
        await asyncio.sleep(0)  # the start is now inside the spawn, waiting for the fork
        await child.stop("test")
        await start
        leftovers = [p.pid for p in psutil.Process().children() if p.pid not in pids_before and alive(p.pid)]
        await child.close()
        return child.state, leftovers

    state, leftovers = asyncio.run(scenario())
    assert leftovers == []
    assert state == State.STOPPED


def test_nothing_starts_once_the_mood_is_shutdown() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], int | None]:
        mood = DaemonMood()
        transitions: list[tuple[str, str]] = []
        child = sleeper(mood, transitions)
        await child.start("test")
        pid = child.pid
        mood.shut_down()
        psutil.Process(pid).kill()  # a crash now would normally be retried at once
        deadline = time.monotonic() + 60  # a hang guard: the crash is seen in milliseconds
        while child.state not in (State.EXITED, State.BACKOFF) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Several retry deadlines (backoff_cap 0.1 s) pass: timers on this loop fire in order, so
        # a retry due within 0.1 s would run before this sleep ends, however slow the machine.
        await asyncio.sleep(0.3)
        await child.start("asked again")
        await child.close()
        return transitions, child.pid

    transitions, pid = asyncio.run(scenario())
    assert pid is None
    assert transitions[-1][1] in ("EXITED", "BACKOFF")
    assert [t for t in transitions if t[1] == "STARTING"] == [("STOPPED", "STARTING")]
