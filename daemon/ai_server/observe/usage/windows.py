"""Time as usage counts it (pure): the `[usage] timezone`, the local hour and day a request
falls in, and the quota windows, which reset at local midnight and on the 1st.

Every function takes the time it works on; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from ai_server.base.zones import valid_zone, zone  # noqa: F401 (usage's zones are these)


@dataclass(frozen=True)
class Bucket:
    """Where a moment falls: its local hour (by the epoch second it starts at, so the hour
    that repeats when clocks go back is two buckets) and its local day."""
    hour: int        # epoch seconds of the local hour's start
    day: str         # local date, YYYY-MM-DD
    day_start: int   # epoch seconds of that day's local midnight


def bucket(ts: float, tz: tzinfo) -> Bucket:
    local = datetime.fromtimestamp(ts, tz)
    hour = local.replace(minute=0, second=0, microsecond=0)
    return Bucket(int(hour.timestamp()), local.date().isoformat(), int(midnight(local.date().isoformat(), tz)))


def midnight(day: str, tz: tzinfo) -> float:
    """Epoch seconds of a local date's first moment (a zone that skips midnight: its first hour)."""
    # zoneinfo reads a midnight that does not exist (a DST jump at 00:00) with the offset
    # before the jump: the instant it names is the first moment of the day.
    return datetime.fromisoformat(day).replace(tzinfo=tz).timestamp()


def next_day(day: str) -> str:
    return (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()


def month_of(day: str) -> str:
    return day[:7]


def next_month(day: str) -> str:
    """The first day of the month after `day`'s."""
    year, month = int(day[:4]), int(day[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}-01"


@dataclass(frozen=True)
class Window:
    """A quota window: its first local day, the local day after its last, and when it resets."""
    first_day: str
    end_day: str        # exclusive
    resets_at: float    # epoch seconds


def today(now: float, tz: tzinfo) -> Window:
    day = bucket(now, tz).day
    end = next_day(day)
    return Window(day, end, midnight(end, tz))


def this_month(now: float, tz: tzinfo) -> Window:
    day = bucket(now, tz).day
    first, end = day[:8] + "01", next_month(day)
    return Window(first, end, midnight(end, tz))


def iso(ts: float, tz: tzinfo) -> str:
    """A moment as people read it in that zone: 2026-12-04T00:00:00+01:00."""
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")
