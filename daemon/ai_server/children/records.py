"""What the supervisor leaves in the state dir so that nothing it started outlives it.

A lock (flock: released by the kernel even on SIGKILL) says whether a supervisor is alive;
children.json names each child by pid, create time *and* command line, so neither a recycled
pid nor a forged record can make the next supervisor signal somebody else's process.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
from pathlib import Path
from typing import IO, Any

import psutil

from ai_server.base.errors import AlreadyRunning
from ai_server.base.files import atomic_write
from ai_server.children.groups import stop_group

_SAME_PROCESS = 0.05  # seconds of create-time slack; psutil rounds differently per platform


def acquire_lock(path: Path) -> IO[str]:
    """Hold the state dir's lock for the life of the process, or refuse clearly."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()[:20] or "unknown"
        handle.close()
        raise AlreadyRunning(f"ai-server is already running (pid {holder}); see `ai-server status`, "
                             "or stop it before starting another") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def write(path: Path, children: dict[str, dict[str, Any] | None]) -> None:
    data = {"supervisor": os.getpid(), "children": {k: v for k, v in children.items() if v}}
    atomic_write(path, json.dumps(data))


def entry(pid: int | None, create_time: float | None) -> dict[str, Any] | None:
    """What the next supervisor needs to find a child if we die without stopping it: pid,
    create time and command line, all three checked before it is ever signalled."""
    if pid is None or create_time is None:
        return None
    try:
        # As the process shows it now: a wrapper script has exec'd into the real program.
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    return {"pid": pid, "create_time": create_time, "argv": argv}


class Book:
    """children.json, kept current by the children themselves: each one puts its own record
    as it spawns and exits, so the file always names every process that is ours right now.
    A Book without a path keeps the records in memory only (tests that drive one child)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any] | None] = {}

    def put(self, name: str, record: dict[str, Any] | None) -> None:
        self.entries[name] = record
        if self.path is not None:
            write(self.path, self.entries)

    def close(self) -> None:
        """After a clean shutdown nothing is left to find."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: v for k, v in data.get("children", {}).items() if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def ours(record: dict[str, Any]) -> psutil.Process | None:
    """The process a record names, if it is still that very process: same pid, same create
    time, same command line, and the same user as us."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > _SAME_PROCESS:
            return None
        if proc.cmdline() != [str(a) for a in record["argv"]]:
            return None
        if proc.uids().real != os.getuid():
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


async def stop_leftovers(path: Path, grace: float = 5.0) -> list[str]:
    """Stop every child a dead supervisor left behind, with its whole group. Returns what it stopped."""
    stopped = []
    for name, record in read(path).items():
        leader = ours(record)
        if leader is None:
            continue
        try:
            family = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            family = [leader]

        async def gone(family: list[psutil.Process] = family) -> None:
            while any(_alive(p) for p in family):
                await asyncio.sleep(0.05)

        # Group members that left the group (a daemonising runner) get the signal one by one.
        for proc in family[1:]:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        await stop_group(leader.pid, signal.SIGTERM, grace, gone)
        for proc in family:
            if _alive(proc):
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        stopped.append(f"{name} (pid {leader.pid})")
    path.unlink(missing_ok=True)
    return stopped


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
