"""One child's state and restart policy, without any I/O.

The driver in process.py reports what happened (spawned, healthy, exited, asked to stop) and
asks what to do; this class decides, against an injected clock, so the whole policy is tested
with a fake one.

The policy, after supervisord, with what its users ask for fixed:
- a child that exits before `startsecs` (or before it answers its health check) failed to start;
- failures in a row are retried after a delay that doubles up to `backoff_cap`, not forever
  longer and not in a tight loop;
- after `startretries` failed starts in a row the child is FATAL, with the reason kept;
- a run of `stable_secs` resets the count; a crash after a stable run restarts at once;
- FATAL is left by `start NAME` or by a change to the child's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ai_server.children.states import ALIVE, State, check
from ai_server.config import RestartPolicy

Clock = Callable[[], float]


class OnTransition(Protocol):
    def __call__(self, name: str, old: State, new: State, reason: str) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    name: str
    state: State
    pid: int | None
    uptime_s: float | None
    restarts: int
    failures: int
    description: str


class Lifecycle:
    def __init__(self, name: str, policy: RestartPolicy, clock: Clock, on_transition: OnTransition):
        self.name = name
        self.policy = policy
        self.clock = clock
        self._on_transition = on_transition
        self.state = State.STOPPED
        self.reason = "not started"
        self.failures = 0
        self.starts = 0
        self.pid: int | None = None
        self.started_at: float | None = None
        self.retry_at: float | None = None

    # -- the one place state changes ------------------------------------------------------------

    def _set_state(self, new: State, reason: str) -> None:
        old = self.state
        check(old, new)
        self.state = new
        self.reason = reason
        self._on_transition(self.name, old, new, reason)

    # -- events ---------------------------------------------------------------------------------

    def start(self, reason: str, fresh: bool = False) -> bool:
        """Asked to start (at launch, by a person, after a config change). True: spawn now.

        Leaving FATAL, or `fresh` (a person asked), starts a new series of retries."""
        if self.state in ALIVE:
            return False
        if self.state == State.FATAL or fresh:
            self.failures = 0
        self.retry_at = None
        self._set_state(State.STARTING, reason)
        return True

    def retry_due(self) -> bool:
        """True when a scheduled retry is due; moves to STARTING so the caller spawns."""
        if self.state not in (State.BACKOFF, State.EXITED) or self.retry_at is None:
            return False
        if self.clock() < self.retry_at:
            return False
        self.retry_at = None
        self._set_state(State.STARTING, f"retry {self.failures} after failure" if self.failures else "restarting")
        return True

    def spawned(self, pid: int) -> None:
        self.pid = pid
        self.started_at = self.clock()
        self.starts += 1

    def start_failed(self, reason: str) -> None:
        """The start failed for a reason the driver knows better than an exit status: the
        program could not be executed, or it never answered its health check and was killed."""
        self._fail_start(reason)

    def can_become_running(self) -> bool:
        return (self.state == State.STARTING and self.started_at is not None
                and self.clock() - self.started_at >= self.policy.startsecs)

    def healthy(self) -> None:
        """Up for startsecs and answering: RUNNING."""
        if self.can_become_running():
            self._set_state(State.RUNNING, "up and answering")

    def exited(self, how: str) -> None:
        """The process is gone. `how` says how, e.g. 'exit status 1' or 'signal 9'."""
        self.pid = None
        ran = self.clock() - self.started_at if self.started_at is not None else 0.0
        if self.state == State.STOPPING:
            self._set_state(State.STOPPED, f"stopped ({how})")
        elif self.state == State.STARTING:
            self._fail_start(f"exited while starting ({how})")
        elif self.state == State.RUNNING:
            if ran >= self.policy.stable_secs:
                self.failures = 0
            delay = self.policy.backoff(self.failures)
            self.failures += 1
            self.retry_at = self.clock() + delay
            when = "restarting now" if delay == 0 else f"restarting in {delay:g}s"
            self._set_state(State.EXITED, f"exited unexpectedly ({how}) after {ran:.1f}s; {when}")

    def fatal(self, reason: str) -> None:
        """Give up now, whatever the count (a security violation, say); caller kills the process."""
        self.retry_at = None
        self._set_state(State.FATAL, reason)

    def stop(self, reason: str) -> bool:
        """Asked to stop. True: there is a live process the caller must signal."""
        self.retry_at = None
        if self.state in (State.STARTING, State.RUNNING):
            self._set_state(State.STOPPING, reason)
            return True
        if self.state in (State.BACKOFF, State.EXITED, State.FATAL):
            self._set_state(State.STOPPED, reason)
        return self.state == State.STOPPING

    # -- helpers --------------------------------------------------------------------------------

    def _fail_start(self, reason: str) -> None:
        self.pid = None
        self.failures += 1
        if self.failures >= self.policy.startretries:
            self._set_state(State.FATAL, f"{reason}; gave up after {self.failures} failed starts in a row")
            return
        delay = self.policy.backoff(self.failures)
        self.retry_at = self.clock() + delay
        self._set_state(State.BACKOFF, f"{reason}; retry {self.failures} of {self.policy.startretries - 1} in {delay:g}s")

    def next_deadline(self) -> float | None:
        """When a scheduled retry is due (readiness is the driver's health loop's business)."""
        if self.retry_at is not None and self.state in (State.BACKOFF, State.EXITED):
            return self.retry_at
        return None

    def snapshot(self) -> Snapshot:
        now = self.clock()
        uptime = now - self.started_at if self.state == State.RUNNING and self.started_at is not None else None
        return Snapshot(self.name, self.state, self.pid, uptime, max(0, self.starts - 1),
                        self.failures, describe(self.state, self.pid, uptime, self.reason))


def format_uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} day{'s' if days != 1 else ''}, {clock}" if days else clock


def describe(state: State, pid: int | None, uptime: float | None, reason: str) -> str:
    """supervisorctl's description column."""
    if state == State.RUNNING and pid is not None and uptime is not None:
        return f"pid {pid}, uptime {format_uptime(uptime)}"
    if state in (State.STARTING, State.STOPPING) and pid is not None:
        return f"pid {pid}, {reason}"
    return reason
