"""The ledger: rollups in, exact sums out, whatever the window; one transaction with the log
position; corrupt and unwritable files named as such."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ai_server.base.errors import LedgerCorrupt, LedgerError
from ai_server.observe.records import ENGINE, ESTIMATED, Ended
from ai_server.observe.usage import ledger as ledger_mod
from ai_server.observe.usage.ledger import Ledger, plan
from ai_server.observe.usage.rollup import TTFT_EDGES_MS, percentile, rollup, ttft_bucket

PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def ended(client: str = "laptop", when: str = "2026-12-02T10:30:00+01:00", tokens: tuple[int, int] = (10, 5),
          **changes: object) -> Ended:
    record = Ended(id="1", client=client, address="100.64.0.2", port=5000, method="POST", path="/v1/chat/completions",
                   query=None, route="/v1/chat/completions", model="qwen2.5-coder:7b", node=None, priority="normal",
                   status=200, received_at=at(when) - 2, ended_at=at(when), forwarded=True, queued=True, bytes_in=100,
                   bytes_out=900, termination="----", t_request_ms=0, t_queue_ms=3, t_connect_ms=0, t_response_ms=40,
                   t_total_ms=2000, input_tokens=tokens[0], output_tokens=tokens[1], gpu_s=1.5, ttft_ms=120.0,
                   usage_source=ENGINE)
    return replace(record, **changes)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / ledger_mod.FILE)


def test_sums_are_exact_by_every_grouping(ledger: Ledger) -> None:
    records = [ended("laptop", "2026-12-01T08:00:00+01:00", (100, 20)),
               ended("laptop", "2026-12-02T23:59:00+01:00", (1, 2), model="llama3:8b", status=500),
               ended("phone", "2026-12-02T00:00:00+01:00", (7, 3), usage_source=ESTIMATED, cut="client", ttft_ms=None)]
    ledger.add(records, PARIS, "spool-a", 300)
    since, until = at("2026-11-01T00:00:00+01:00"), at("2026-12-03T00:00:00+01:00")
    by_client = {t.key: t for t in ledger.totals(since, until, "client", PARIS)}
    assert (by_client["laptop"].requests, by_client["laptop"].errors) == (2, 1)
    assert (by_client["laptop"].input_tokens, by_client["laptop"].output_tokens) == (101, 22)
    assert by_client["laptop"].gpu_seconds == 3.0
    assert (by_client["phone"].estimated, by_client["phone"].cut, by_client["phone"].ttft_p50_ms) == (1, 1, None)
    assert [t.key for t in ledger.totals(since, until, "day", PARIS)] == ["2026-12-01", "2026-12-02"]
    assert {t.key: t.requests for t in ledger.totals(since, until, "model", PARIS)} == {"qwen2.5-coder:7b": 2, "llama3:8b": 1}
    assert [t.key for t in ledger.totals(since, until, "node", PARIS)] == ["local"]
    hours = ledger.totals(at("2026-12-02T00:00:00+01:00"), until, "hour", PARIS)
    assert [t.key for t in hours] == ["2026-12-02T00:00", "2026-12-02T23:00"]
    only = ledger.totals(since, until, "client", PARIS, client="phone")
    assert [t.key for t in only] == ["phone"]
    assert ledger.offset("spool-a") == 300 and ledger.offset("spool-b") is None


def test_a_window_starting_mid_day_reads_that_days_hours(ledger: Ledger) -> None:
    ledger.add([ended(when="2026-12-02T09:10:00+01:00"), ended(when="2026-12-02T11:10:00+01:00"),
                ended(when="2026-12-03T09:00:00+01:00")], PARIS, "s", 1)
    totals = ledger.totals(at("2026-12-02T10:45:00+01:00"), at("2026-12-03T12:00:00+01:00"), "client", PARIS)
    assert totals[0].requests == 2  # 11:10 and the next day; not 09:10


def test_a_year_is_read_from_months_days_and_hours() -> None:
    since, until = at("2025-12-15T13:20:00+01:00"), at("2026-12-02T10:00:00+01:00")
    parts = plan(since, until, "client", PARIS)
    assert [p[0] for p in parts] == ["daily", "monthly"]  # past the hourly rows: read from its whole day
    assert parts[0][1] == at("2025-12-15T00:00:00+01:00") and parts[1][1] == at("2026-01-01T00:00:00+01:00")
    recent = plan(at("2026-11-20T13:20:00+01:00"), until, "client", PARIS)
    assert [p[0] for p in recent] == ["hourly", "daily", "monthly"]
    assert plan(at("2026-11-20T13:20:00+01:00"), until, "day", PARIS)[-1][0] == "daily"
    assert plan(since, until, "hour", PARIS) == [("hourly", int(at("2025-12-15T13:00:00+01:00")), until)]


def test_window_use_per_client(ledger: Ledger) -> None:
    ledger.add([ended("laptop", "2026-12-01T08:00:00+01:00", (100, 20)),
                ended("laptop", "2026-12-02T08:00:00+01:00", (1, 2)),
                ended("laptop", "2026-11-30T23:00:00+01:00", (1000, 0))], PARIS, "s", 1)
    use = ledger.use(at("2026-12-02T12:00:00+01:00"), PARIS)["laptop"]
    assert (use.tokens_today, use.tokens_month, use.gpu_seconds_today) == (3, 123, 1.5)


def test_unmetered_records_are_not_counted(ledger: Ledger) -> None:
    ledger.add([ended(usage_source=None, input_tokens=0, output_tokens=0)], PARIS, "s", 10)
    assert ledger.totals(0, at("2030-01-01T00:00:00+00:00"), "client", PARIS) == []
    assert ledger.offset("s") == 10


def test_records_and_position_are_one_transaction(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.add([ended()], PARIS, "s", 10)
    batch = rollup([ended()], PARIS)
    batch.daily[next(iter(batch.daily))].requests = None  # type: ignore[assignment]  # NOT NULL: the insert fails
    with pytest.raises(LedgerError):
        ledger.add_batch(batch, "s", 20)
    assert ledger.offset("s") == 10
    assert ledger.totals(0, at("2030-01-01T00:00:00+00:00"), "client", PARIS)[0].requests == 1


def test_prune_keeps_whole_months(ledger: Ledger) -> None:
    ledger.add([ended(when="2026-01-10T10:00:00+01:00"), ended(when="2026-12-02T10:00:00+01:00")], PARIS, "s", 1)
    ledger.prune(at("2026-12-02T12:00:00+01:00"), keep_days=300, tz=PARIS)  # cutoff 2026-02-05
    until = at("2026-12-03T00:00:00+01:00")
    assert [t.key for t in ledger.totals(at("2026-01-01T00:00:00+01:00"), until, "day", PARIS)] == ["2026-12-02"]
    assert sum(t.requests for t in ledger.totals(at("2026-01-01T00:00:00+01:00"), until, "client", PARIS)) == 1
    assert ledger.totals(at("2026-12-02T00:00:00+01:00"), until, "hour", PARIS)[0].requests == 1


def test_percentiles_within_a_bucket() -> None:
    histogram = [0] * (len(TTFT_EDGES_MS) + 1)
    for ms in [100.0] * 50 + [1000.0] * 45 + [9000.0] * 5:
        histogram[ttft_bucket(ms)] += 1
    assert abs(percentile(histogram, 0.5) - 100) / 100 < 0.25  # type: ignore[operator]
    assert abs(percentile(histogram, 0.95) - 1000) / 1000 < 0.25  # type: ignore[operator]
    assert percentile([0] * len(histogram), 0.5) is None


def test_a_file_that_is_not_a_ledger_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / ledger_mod.FILE
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerCorrupt):
        Ledger(path)


def test_a_damaged_ledger_fails_its_check(tmp_path: Path) -> None:
    path = tmp_path / ledger_mod.FILE
    good = Ledger(path)
    good.add([ended(client=f"c{i}", when=f"2026-12-{1 + i % 28:02d}T10:00:00+01:00") for i in range(3000)], PARIS, "s", 1)
    good.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(path.read_bytes())
    data[8192:8192 + 4096] = os.urandom(4096)
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt):
        damaged = Ledger(path)
        damaged.check()
        damaged.totals(0, at("2030-01-01T00:00:00+00:00"), "client", PARIS)


def test_a_read_only_ledger_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / ledger_mod.FILE
    Ledger(path).close()
    reader = Ledger(path, readonly=True)
    with pytest.raises(LedgerError) as caught:
        reader.add([ended()], PARIS, "s", 1)
    assert not isinstance(caught.value, LedgerCorrupt)
