"""The restart policy against a fake clock: no processes, no sleeps."""

from __future__ import annotations

import pytest

from ai_server.children.lifecycle import Lifecycle, format_uptime
from ai_server.children.states import ALLOWED, State, TransitionError, check
from ai_server.config import RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def transitions() -> list[tuple[str, str, str]]:
    return []


def make(clock: FakeClock, transitions: list, **policy: float) -> Lifecycle:
    defaults = dict(startsecs=1, startretries=4, backoff_base=1, backoff_cap=4, stable_secs=60)
    defaults.update(policy)
    return Lifecycle("ollama", RestartPolicy(**defaults), clock,
                     lambda name, old, new, reason: transitions.append((old.value, new.value, reason)))


def run_up(lc: Lifecycle, clock: FakeClock, pid: int = 100) -> None:
    assert lc.start("launch")
    lc.spawned(pid)
    clock.advance(lc.policy.startsecs)
    lc.healthy()
    assert lc.state == State.RUNNING


def test_running_only_after_startsecs(clock, transitions) -> None:
    lc = make(clock, transitions, startsecs=2)
    lc.start("launch")
    lc.spawned(1)
    clock.advance(1.9)
    lc.healthy()
    assert lc.state == State.STARTING
    clock.advance(0.1)
    lc.healthy()
    assert lc.state == State.RUNNING
    assert transitions == [("STOPPED", "STARTING", "launch"), ("STARTING", "RUNNING", "up and answering")]


def test_failed_starts_back_off_exponentially_with_a_cap_then_fatal(clock, transitions) -> None:
    lc = make(clock, transitions, startretries=5, backoff_base=1, backoff_cap=4)
    lc.start("launch")
    delays = []
    for attempt in range(5):
        lc.spawned(attempt)
        clock.advance(0.2)
        lc.exited("exit status 1")
        if lc.state == State.FATAL:
            break
        assert lc.state == State.BACKOFF
        delays.append(lc.retry_at - clock.now)
        clock.advance(delays[-1] - 0.01)
        assert not lc.retry_due()  # not a moment early
        clock.advance(0.01)
        assert lc.retry_due()
        assert lc.state == State.STARTING
    assert delays == [1, 2, 4, 4]  # doubling, capped
    assert lc.state == State.FATAL
    assert "gave up after 5 failed starts in a row" in lc.reason
    assert "exit status 1" in lc.reason
    assert lc.next_deadline() is None  # FATAL waits for a person


def test_fatal_is_left_by_start_with_a_fresh_count(clock, transitions) -> None:
    lc = make(clock, transitions, startretries=1)
    lc.start("launch")
    lc.spawned(1)
    lc.exited("exit status 1")
    assert lc.state == State.FATAL
    assert lc.start("requested by start", fresh=True)
    assert lc.failures == 0 and lc.state == State.STARTING


def test_crash_after_stable_run_restarts_at_once_and_resets_count(clock, transitions) -> None:
    lc = make(clock, transitions)
    lc.failures = 3
    run_up(lc, clock)
    clock.advance(60)
    lc.exited("signal SIGKILL")
    assert lc.state == State.EXITED
    assert lc.retry_at == clock.now  # no delay
    assert lc.retry_due() and lc.state == State.STARTING
    assert lc.failures == 1


def test_crash_loop_after_running_backs_off(clock, transitions) -> None:
    lc = make(clock, transitions, backoff_cap=8)
    run_up(lc, clock)
    waits = []
    for pid in range(2, 6):
        clock.advance(5)  # never stable
        lc.exited("signal SIGSEGV")
        waits.append(lc.retry_at - clock.now)
        clock.advance(waits[-1])
        assert lc.retry_due()
        lc.spawned(pid)
        clock.advance(1)
        lc.healthy()
    assert waits == [0, 1, 2, 4]


def test_stop_from_each_state(clock, transitions) -> None:
    lc = make(clock, transitions)
    assert lc.stop("requested") is False and lc.state == State.STOPPED
    run_up(lc, clock)
    assert lc.stop("requested") is True and lc.state == State.STOPPING
    lc.exited("exit status 0")
    assert lc.state == State.STOPPED and lc.reason == "stopped (exit status 0)"
    lc.start("launch")
    lc.spawned(2)
    lc.exited("exit status 1")
    assert lc.state == State.BACKOFF
    assert lc.stop("requested") is False and lc.state == State.STOPPED
    assert lc.next_deadline() is None


def test_start_failed_counts_like_an_early_exit(clock, transitions) -> None:
    lc = make(clock, transitions)
    lc.start("launch")
    lc.start_failed("cannot execute ollama: No such file or directory")
    assert lc.state == State.BACKOFF and "cannot execute" in lc.reason


def test_every_transition_is_reported_once(clock, transitions) -> None:
    lc = make(clock, transitions)
    run_up(lc, clock)
    lc.stop("shutdown")
    lc.exited("exit status 0")
    assert [(a, b) for a, b, _ in transitions] == [
        ("STOPPED", "STARTING"), ("STARTING", "RUNNING"), ("RUNNING", "STOPPING"), ("STOPPING", "STOPPED")]
    assert all(reason for _, _, reason in transitions)


def test_invalid_transitions_are_refused() -> None:
    with pytest.raises(TransitionError):
        check(State.STOPPED, State.RUNNING)
    assert set(ALLOWED) == set(State)


def test_snapshot_describes_like_supervisorctl(clock, transitions) -> None:
    lc = make(clock, transitions)
    run_up(lc, clock, pid=4242)
    clock.advance(723)
    snap = lc.snapshot()
    assert snap.description == "pid 4242, uptime 0:12:04"
    assert snap.uptime_s == pytest.approx(724)
    assert format_uptime(2 * 86400 + 5) == "2 days, 0:00:05"
