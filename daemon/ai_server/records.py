"""What the supervisor leaves in the state dir so that nothing it started outlives it.

A lock (flock: released by the kernel even on SIGKILL) says whether a supervisor is alive;
children.json names each child by pid *and* create time, so a recycled pid is never mistaken
for one of ours.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path
from typing import IO, Any

import psutil

from ai_server.errors import AlreadyRunning

_SAME_PROCESS = 0.05  # seconds of create-time slack; psutil rounds differently per platform


def acquire_lock(path: Path) -> IO[str]:
    """Hold the state dir's lock for the life of the process, or refuse clearly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
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
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {k: v for k, v in data.get("children", {}).items() if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def ours(record: dict[str, Any]) -> psutil.Process | None:
    """The process a record names, if it is still that very process."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) <= _SAME_PROCESS:
            return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def stop_leftovers(path: Path, grace: float = 5.0) -> list[str]:
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
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(leader.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for proc in family:
                try:
                    proc.send_signal(sig)
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(family, timeout=grace if sig == signal.SIGTERM else 2.0)
            family = alive
            if not family:
                break
        stopped.append(f"{name} (pid {leader.pid})")
    path.unlink(missing_ok=True)
    return stopped
