"""What a reload waits for before it reads the config files: background.unsettled, pure."""

from __future__ import annotations

from ai_server.daemon.background import QUIET_S, unsettled

NOW = 1_000_000.0
OLD = NOW - 3600


def test_a_file_emptied_or_gone_waits() -> None:
    before = {"clients.toml": 120, "allowlist.toml": 0}
    stats = {"clients.toml": (0, NOW), "allowlist.toml": (0, 0.0)}
    assert unsettled(before, stats, NOW) == {"clients.toml": "emptied or gone"}


def test_a_file_written_within_the_quiet_time_waits_and_then_is_read() -> None:
    """A save in pieces (finding F3): a file written less than QUIET_S ago may have more to come."""
    before = {"clients.toml": 120}
    assert unsettled(before, {"clients.toml": (80, NOW - QUIET_S / 2)}, NOW) == {"clients.toml": "being written"}
    assert unsettled(before, {"clients.toml": (80, NOW - QUIET_S)}, NOW) == {}
    assert unsettled(before, {"clients.toml": (80, OLD)}, NOW) == {}


def test_a_time_ahead_of_the_clock_waits_too() -> None:
    """A file time ahead of the clock (skew, a copy keeping its times) is waited for like a fresh
    one; settle's deadline (SETTLE_S) bounds the wait."""
    assert unsettled({}, {"allowlist.toml": (10, NOW + 30)}, NOW) == {"allowlist.toml": "being written"}


def test_an_empty_file_that_was_empty_is_no_reason_to_wait() -> None:
    assert unsettled({"ai-server.toml": 0}, {"ai-server.toml": (0, NOW)}, NOW) == {}
