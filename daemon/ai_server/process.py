"""One supervised child: spawn it in its own process group, read its output, watch it, stop it.

The decisions live in lifecycle.Lifecycle; this is the thin shell that does the I/O.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import psutil

from ai_server import logs
from ai_server.config import RestartPolicy
from ai_server.lifecycle import Clock, Lifecycle, OnTransition, Snapshot
from ai_server.states import State

_MAX_LINE = 16384


@dataclass(frozen=True)
class Spec:
    """How to run a child: argv, environment, and how to ask it to stop."""
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Child:
    """A child process under supervision."""

    def __init__(
        self,
        name: str,
        spec: Callable[[], Spec],
        policy: RestartPolicy,
        clock: Clock,
        on_transition: OnTransition,
        *,
        ready: Callable[[], Awaitable[bool]] | None = None,
        start_timeout: float = 60.0,
        audit: Callable[[int], str | None] | None = None,
        audit_every: float = 2.0,
        on_change: Callable[[], None] = lambda: None,
    ):
        self.name = name
        self.lc = Lifecycle(name, policy, clock, on_transition)
        self._spec = spec
        self._ready = ready
        self._audit = audit
        self.audit_every = audit_every
        self.start_timeout = start_timeout
        self._on_change = on_change
        self._log = logs.get()
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._kill_reason: str | None = None
        self.create_time: float | None = None
        self.last_output: deque[str] = deque(maxlen=5)

    # -- public ----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.lc.state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def snapshot(self) -> Snapshot:
        return self.lc.snapshot()

    def record(self) -> dict[str, float | int] | None:
        """What the next supervisor needs to find this process if we die without stopping it."""
        if self.pid is None or self.create_time is None:
            return None
        return {"pid": self.pid, "create_time": self.create_time}

    def set_policy(self, policy: RestartPolicy, start_timeout: float) -> None:
        self.lc.policy = policy
        self.start_timeout = start_timeout

    async def start(self, reason: str, fresh: bool = False) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"{self.name}-ticker")
        if self.lc.start(reason, fresh):
            await self._spawn()

    async def stop(self, reason: str, timeout: float | None = None) -> None:
        """Stop and wait: the stop signal, then SIGKILL to the whole group after the timeout."""
        proc, watcher = self._proc, self._watcher
        if not self.lc.stop(reason) or proc is None or watcher is None:
            self._wake.set()
            return
        spec = self._spec()
        timeout = spec.stop_timeout if timeout is None else timeout
        kill_group(proc.pid, spec.stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(watcher), timeout)
        except asyncio.TimeoutError:
            self._log.warning("stop_timeout", process=self.name, pid=proc.pid,
                              reason=f"still running {timeout:g}s after {signal.Signals(spec.stop_signal).name}; sending SIGKILL")
            kill_group(proc.pid, signal.SIGKILL)
            await asyncio.shield(watcher)

    async def settled(self, timeout: float) -> State:
        """Wait until the child is past STARTING (RUNNING, BACKOFF, FATAL...), as supervisorctl does."""
        deadline = self.lc.clock() + timeout
        while self.lc.state == State.STARTING and self.lc.clock() < deadline:
            await asyncio.sleep(0.05)
        return self.lc.state

    async def restart(self, reason: str, fresh: bool = False) -> None:
        await self.stop(reason)
        await self.start(reason, fresh)

    async def kill_now(self, reason: str) -> None:
        """FATAL at once, process group killed: for a child that must not keep running."""
        proc, watcher = self._proc, self._watcher
        self.lc.fatal(reason)
        if proc is not None:
            kill_group(proc.pid, signal.SIGKILL)
        if watcher is not None:
            await asyncio.shield(watcher)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    # -- internals -------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Wakes at the lifecycle's deadlines (retries) and on every change."""
        while True:
            deadline = self.lc.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.lc.clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.lc.retry_due():
                await self._spawn()

    async def _spawn(self) -> None:
        spec = self._spec()
        self.last_output.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, env=spec.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: stop reaches workers and runners
            )
        except OSError as err:
            self.lc.start_failed(f"cannot execute {spec.argv[0]}: {err.strerror or err}")
            self._changed()
            return
        self._proc = proc
        try:
            self.create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            self.create_time = None
        self.lc.spawned(proc.pid)
        self._log.info("spawned", process=self.name, pid=proc.pid, argv=list(spec.argv))
        self._changed()
        self._watcher = asyncio.create_task(self._watch(proc), name=f"{self.name}-watch")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                 asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        ready = asyncio.create_task(self._become_ready(proc))
        returncode = await proc.wait()
        ready.cancel()
        # Whatever the leader left behind in its group (HAProxy workers, Ollama runners) goes too.
        kill_group(proc.pid, signal.SIGKILL)
        await asyncio.wait(pumps, timeout=2.0)
        for pump in pumps:
            pump.cancel()
        self._proc = None
        self.create_time = None
        how = describe_exit(returncode)
        if self.last_output and self.lc.state == State.STARTING:
            how += f"; last output: {self.last_output[-1][:300]}"
        if self._kill_reason is not None:
            reason, self._kill_reason = self._kill_reason, None
            if self.lc.state == State.STARTING:
                self.lc.start_failed(reason)
            else:
                self.lc.exited(how)
        else:
            self.lc.exited(how)
        self._changed()

    async def _audited(self, proc: asyncio.subprocess.Process) -> bool:
        """Run the audit (if any); on a finding, kill the group and go FATAL. False then."""
        if self._audit is None or proc.returncode is not None:
            return True
        problem = await asyncio.to_thread(self._audit, proc.pid)
        if problem is None:
            return True
        self._log.error("security", process=self.name, pid=proc.pid, finding=problem)
        await self.kill_now(problem)
        return False

    async def _become_ready(self, proc: asyncio.subprocess.Process) -> None:
        # Audited from the first moment, not only once healthy: a socket opened on the wrong
        # address is caught within one poll, not after startsecs.
        started = self.lc.clock()
        deadline = started + self.lc.policy.startsecs + self.start_timeout
        while self.lc.state == State.STARTING and proc.returncode is None:
            if not await self._audited(proc):
                return
            if self.lc.can_become_running() and (self._ready is None or await self._ready()):
                if not await self._audited(proc):
                    return
                self.lc.healthy()
                self._changed()
                break
            if self.lc.clock() >= deadline:
                self._kill_reason = f"no answer to its health check within {self.start_timeout:g}s; killed"
                kill_group(proc.pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.1)
        while self._audit is not None and self.lc.state == State.RUNNING and proc.returncode is None:
            await asyncio.sleep(self.audit_every)
            if not await self._audited(proc):
                return

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._emit(name, line)
            if len(pending) > _MAX_LINE:
                self._emit(name, pending)
                pending = b""
        if pending:
            self._emit(name, pending)

    def _emit(self, stream: str, raw: bytes) -> None:
        line = raw[:_MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        if not line:
            return
        self.last_output.append(line)
        self._log.info("output", process=self.name, stream=stream, line=line)

    def _changed(self) -> None:
        self._wake.set()
        self._on_change()
