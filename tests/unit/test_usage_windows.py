"""Local hours, days and quota windows in [usage] timezone (pure, no clock)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ai_server.observe.usage import windows

PARIS, KOLKATA = ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Kolkata")


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_day_starts_at_local_midnight_even_half_an_hour_off_utc() -> None:
    where = windows.bucket(at("2026-03-10T00:10:00+05:30"), KOLKATA)
    assert where.day == "2026-03-10"
    assert where.day_start == at("2026-03-10T00:00:00+05:30")
    assert where.hour == at("2026-03-10T00:00:00+05:30")


def test_the_hour_that_repeats_when_clocks_go_back_is_two_buckets() -> None:
    first = windows.bucket(at("2026-10-25T02:30:00+02:00"), PARIS)
    second = windows.bucket(at("2026-10-25T02:30:00+01:00"), PARIS)
    assert first.day == second.day == "2026-10-25"
    assert second.hour - first.hour == 3600


def test_windows_reset_at_midnight_and_on_the_first() -> None:
    now = at("2026-12-31T23:59:59+01:00")
    assert windows.today(now, PARIS) == windows.Window("2026-12-31", "2027-01-01", at("2027-01-01T00:00:00+01:00"))
    assert windows.this_month(now, PARIS) == windows.Window("2026-12-01", "2027-01-01", at("2027-01-01T00:00:00+01:00"))
    assert windows.iso(windows.today(now, PARIS).resets_at, PARIS) == "2027-01-01T00:00:00+01:00"


def test_a_day_of_23_hours_resets_on_time() -> None:
    # Paris springs forward on 2026-03-29: that day has 23 hours.
    window = windows.today(at("2026-03-29T12:00:00+02:00"), PARIS)
    assert window.resets_at - windows.midnight("2026-03-29", PARIS) == 23 * 3600


def test_a_midnight_that_does_not_exist_starts_the_day_at_its_first_moment() -> None:
    sao_paulo = ZoneInfo("America/Sao_Paulo")  # 2018-11-04 began at 01:00 (DST at midnight)
    assert windows.iso(windows.midnight("2018-11-04", sao_paulo), sao_paulo) == "2018-11-04T01:00:00-02:00"


def test_local_follows_tz_then_etc_localtime(tmp_path: Path) -> None:
    assert windows.zone("local", {"TZ": "Asia/Kolkata"}).utcoffset(datetime(2026, 1, 1)).total_seconds() == 19800  # type: ignore[union-attr]
    localtime = tmp_path / "localtime"
    localtime.write_bytes(Path("/usr/share/zoneinfo/Europe/Paris").read_bytes())
    zone = windows.zone("local", {}, localtime)
    assert windows.iso(at("2026-07-01T12:00:00+00:00"), zone) == "2026-07-01T14:00:00+02:00"
    assert windows.zone("local", {}, tmp_path / "missing") is not None


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "Europe/Paris\n"])
def test_a_name_that_is_not_a_zone_is_refused(name: str) -> None:
    assert windows.valid_zone(name) is not None
    with pytest.raises(ValueError):
        windows.zone(name)
