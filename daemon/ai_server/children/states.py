"""The seven process states, as supervisord names them, and the moves allowed between them.

    STOPPED ──start──▶ STARTING ──up startsecs, healthy──▶ RUNNING
       ▲                 │  │                                │  │
       │       died early│  └──stop──▶ STOPPING ◀──stop──────┘  │died
       │                 ▼                │                     ▼
       │              BACKOFF ──retry──▶ STARTING            EXITED ──restart──▶ STARTING
       │                 │ too many                              │
       └──stop───────────┤                                       │
                         ▼                                       │
                       FATAL ──start / config change──▶ STARTING │
    STOPPING ──▶ STOPPED (and EXITED/FATAL ──stop──▶ STOPPED)  ◀─┘
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"

    def __str__(self) -> str:
        return self.value


ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.STOPPING, State.FATAL}),
    State.RUNNING: frozenset({State.STOPPING, State.EXITED, State.FATAL}),
    State.BACKOFF: frozenset({State.STARTING, State.FATAL, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED, State.BACKOFF}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
}

# States in which the child has a live process.
ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


class Mood(StrEnum):
    """The daemon's own state, as supervisord's "mood": once SHUTDOWN, nothing starts again.

    Every path that spawns a child (a start, a retry, an engine restart, a reload, a warm-up)
    asks first, so a signal that arrives in the middle of any of them cannot be undone by it."""

    RUNNING = "RUNNING"
    SHUTDOWN = "SHUTDOWN"


class DaemonMood:
    """The one mood of the whole daemon, shared by everything that can start a child. It moves
    once, RUNNING -> SHUTDOWN, and never back."""

    def __init__(self) -> None:
        self._now = Mood.RUNNING

    @property
    def now(self) -> Mood:
        return self._now

    @property
    def shutting_down(self) -> bool:
        return self._now is Mood.SHUTDOWN

    def shut_down(self) -> None:
        self._now = Mood.SHUTDOWN


class TransitionError(RuntimeError):
    """A move the table above does not allow: a bug in the caller, never user input."""


def check(old: State, new: State) -> None:
    if new not in ALLOWED[old]:
        raise TransitionError(f"{old} -> {new} is not a valid transition")
