"""One supervised child: spawn it in its own process group, read its output, watch it, stop it.

The decisions live in lifecycle.Lifecycle; this is the thin shell that does the I/O.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import psutil

from ai_server.base import logs
from ai_server.children import records
from ai_server.children.context import Context
from ai_server.children.groups import signal_group, stop_group
from ai_server.children.lifecycle import Lifecycle, OnTransition, Snapshot
from ai_server.children.output import Output
from ai_server.children.states import State
from ai_server.config import RestartPolicy


class Role(Enum):
    """What a child is for; its start priority orders starts (low first) and stops (high first).

    The engine starts first so the proxy's first health check finds it answering; the proxy
    stops first so no new request reaches an engine that is about to go."""

    ENGINE = 10
    PROXY = 20

    @property
    def priority(self) -> int:
        return self.value


@dataclass(frozen=True)
class Spec:
    """How to run a child: argv, environment, and how to ask it to stop."""
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0
    cwd: str | None = None
    # Descriptors the child inherits at the same numbers (HAProxy: the request log).
    pass_fds: tuple[int, ...] = ()


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def log_transition(name: str, old: State, new: State, reason: str) -> None:
    """The one place every state change of every child is logged."""
    level = "warning" if new in (State.BACKOFF, State.EXITED, State.FATAL) else "info"
    getattr(logs.get(), level)("state", process=name, **{"from": old.value, "to": new.value}, reason=reason)


class Child:
    """A child process under supervision. `spec` is asked at every spawn and stop: the owner
    (EngineChild, ProxyChild) answers from what it last applied."""

    def __init__(
        self,
        name: str,
        role: Role,
        spec: Callable[[], Spec],
        policy: RestartPolicy,
        ctx: Context,
        *,
        ready: Callable[[], Awaitable[bool]] | None = None,
        start_timeout: float = 60.0,
        audit: Callable[[int], str | None] | None = None,
        audit_every: float = 2.0,
        on_transition: OnTransition | None = None,
    ):
        self.name = name
        self.role = role
        self._ctx = ctx
        self._observer = on_transition
        self._lc = Lifecycle(name, policy, ctx.clock, self._transitioned)
        self._spec = spec
        self._ready = ready
        self._audit = audit
        self.audit_every = audit_every
        self.start_timeout = start_timeout
        self._log = logs.get()
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._spawning: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._kill_reason: str | None = None
        self.create_time: float | None = None
        self.last_audit: float | None = None
        self.output = Output(name)

    # -- public ----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._lc.state

    @property
    def policy(self) -> RestartPolicy:
        return self._lc.policy

    def set_policy(self, policy: RestartPolicy, start_timeout: float | None = None) -> None:
        """A new restart policy (and health-check deadline) for the next start; no restart."""
        self._lc.policy = policy
        if start_timeout is not None:
            self.start_timeout = start_timeout

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def snapshot(self) -> Snapshot:
        return self._lc.snapshot()

    def record(self) -> dict[str, Any] | None:
        """This child's entry in children.json (records.entry), None when it is not running."""
        return records.entry(self.pid, self.create_time)

    async def start(self, reason: str, fresh: bool = False) -> None:
        if self._ctx.mood.shutting_down:
            self._log.info("start_refused", process=self.name, reason=f"{reason}: shutting down")
            return
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"{self.name}-ticker")
        if self._lc.start(reason, fresh):
            await self._spawn()

    async def stop(self, reason: str, timeout: float | None = None) -> None:
        """Stop and wait: the stop signal, then SIGKILL to the whole group after the timeout."""
        if self._spawning is not None:
            # A start is between fork and record: stop what it starts, not nothing.
            await asyncio.shield(self._spawning)
        proc, watcher = self._proc, self._watcher
        if not self._lc.stop(reason) or proc is None or watcher is None:
            self._wake.set()
            return
        spec = self._spec()
        timeout = spec.stop_timeout if timeout is None else timeout
        if await stop_group(proc.pid, spec.stop_signal, timeout, lambda: asyncio.shield(watcher)):
            self._log.warning("stop_timeout", process=self.name, pid=proc.pid,
                              reason=f"still running {timeout:g}s after {signal.Signals(spec.stop_signal).name}; killed")

    def signal(self, sig: int) -> bool:
        """Send `sig` to the child itself (HAProxy's master takes SIGUSR2 as "reload")."""
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    async def settled(self) -> State:
        """Wait until the child is past STARTING (RUNNING, BACKOFF, FATAL...), as supervisorctl
        does: at most startsecs and the health check's deadline."""
        deadline = self._ctx.clock() + self.policy.startsecs + self.start_timeout
        while self._lc.state == State.STARTING and self._ctx.clock() < deadline:
            await asyncio.sleep(0.05)
        return self._lc.state

    async def restart(self, reason: str, fresh: bool = False) -> None:
        await self.stop(reason)
        await self.start(reason, fresh)

    async def kill_now(self, reason: str) -> None:
        """FATAL at once, process group killed: for a child that must not keep running."""
        proc, watcher = self._proc, self._watcher
        self._lc.fatal(reason)
        if proc is not None:
            signal_group(proc.pid, signal.SIGKILL)
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
            deadline = self._lc.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._lc.clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._ctx.mood.shutting_down:
                return
            if self._lc.retry_due():
                await self._spawn()

    async def _spawn(self) -> None:
        self._spawning = asyncio.get_running_loop().create_future()
        try:
            await self._spawn_now()
        finally:
            self._spawning.set_result(None)
            self._spawning = None

    async def _spawn_now(self) -> None:
        spec = self._spec()
        self.output.last.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, env=spec.env, cwd=spec.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=spec.pass_fds,
                start_new_session=True,  # its own process group: stop reaches workers and runners
            )
        except OSError as err:
            self._lc.start_failed(f"cannot execute {spec.argv[0]}: {err.strerror or err}")
            self._changed()
            return
        self._proc = proc
        try:
            self.create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            self.create_time = None
        self._lc.spawned(proc.pid)
        self._log.info("spawned", process=self.name, pid=proc.pid, argv=list(spec.argv))
        self._changed()
        self._watcher = asyncio.create_task(self._watch(proc), name=f"{self.name}-watch")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.create_task(self.output.pump(proc.stdout, "stdout")),
                 asyncio.create_task(self.output.pump(proc.stderr, "stderr"))]
        ready = asyncio.create_task(self._become_ready(proc))
        returncode = await proc.wait()
        ready.cancel()
        # Whatever the leader left behind in its group (HAProxy workers, Ollama runners) goes too.
        signal_group(proc.pid, signal.SIGKILL)
        await asyncio.wait(pumps, timeout=2.0)
        for pump in pumps:
            pump.cancel()
        self._proc = None
        self.create_time = None
        how = describe_exit(returncode)
        if self.output.last and self._lc.state == State.STARTING:
            how += f"; last output: {self.output.last[-1][:300]}"
        if self._kill_reason is not None and self._lc.state == State.STARTING:
            self._lc.start_failed(self._kill_reason)
        else:
            self._lc.exited(how)
        self._kill_reason = None
        self._changed()

    async def _audited(self, proc: asyncio.subprocess.Process) -> bool:
        """Run the audit (if any); on a finding, kill the group and go FATAL. False then."""
        if self._audit is None or proc.returncode is not None:
            return True
        problem = await asyncio.to_thread(self._audit, proc.pid)
        self.last_audit = self._lc.clock()
        if problem is None:
            return True
        self._log.error("security", process=self.name, pid=proc.pid, finding=problem)
        await self.kill_now(problem)
        return False

    async def _become_ready(self, proc: asyncio.subprocess.Process) -> None:
        # Audited from the first moment, not only once healthy: a socket opened on the wrong
        # address is caught within one poll, not after startsecs.
        started = self._lc.clock()
        deadline = started + self._lc.policy.startsecs + self.start_timeout
        while self._lc.state == State.STARTING and proc.returncode is None:
            if not await self._audited(proc):
                return
            if self._lc.can_become_running() and (self._ready is None or await self._ready()):
                if not await self._audited(proc):
                    return
                self._lc.healthy()
                self._changed()
                break
            if self._lc.clock() >= deadline:
                self._kill_reason = f"no answer to its health check within {self.start_timeout:g}s; killed"
                signal_group(proc.pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.1)
        while self._audit is not None and self._lc.state == State.RUNNING and proc.returncode is None:
            await asyncio.sleep(self.audit_every)
            if not await self._audited(proc):
                return

    def _transitioned(self, name: str, old: State, new: State, reason: str) -> None:
        log_transition(name, old, new, reason)
        if self._observer is not None:
            self._observer(name, old, new, reason)

    def _changed(self) -> None:
        """Spawned or gone: wake the ticker, and keep this child's entry in the records true."""
        self._wake.set()
        self._ctx.records.put(self.name, self.record())
