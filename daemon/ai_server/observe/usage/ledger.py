"""The ledger: `usage.sqlite` in the state dir (stdlib sqlite3, WAL), no server.

    spool     where in HAProxy's request log the ledger has read to (one row per log file)
    hourly    sums per local hour    x client, model, node   (kept HOURLY_DAYS)
    daily     sums per local day     x client, model, node   (kept [usage] keep_days)
    monthly   sums per local month   x client, model, node   (kept [usage] keep_days, whole months)

Rollups only (rollup.py says what a row holds): never a prompt, a response, or one row per
request. Each row is keyed by the epoch second its period starts at, with its label (the local
day, or the month) beside it. Records are added with the log position they were read up to, in one transaction, so
a crash anywhere re-reads at most what was not committed and counts nothing twice.

The supervisor writes; `ai-server usage` reads (read-only, at the same time: WAL). Errors from
SQLite become LedgerCorrupt (the file cannot be read as a ledger) or LedgerError (it cannot be
written or read now: disk full, read-only, locked); the caller decides what to do with each.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from ai_server.base.errors import LedgerCorrupt, LedgerError
from ai_server.observe.records import Ended
from ai_server.observe.usage import windows
from ai_server.observe.usage.rollup import TTFT_BUCKETS, Batch, Sums, percentile, rollup

FILE = "usage.sqlite"
SCHEMA_VERSION = "1"
# Hourly rows serve `--by hour` and the first, partial day of a longer window: a month and a bit.
HOURLY_DAYS = 35
BY = ("client", "model", "node", "day", "hour")

_SUMS = ["requests", "errors", "input_tokens", "output_tokens", "gpu_ms", "estimated", "cut", "queue_ms",
         *[f"ttft_{i:02d}" for i in range(TTFT_BUCKETS)]]
_SUM_COLUMNS = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _SUMS)
TABLES = ("hourly", "daily", "monthly")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spool (id TEXT PRIMARY KEY, offset INTEGER NOT NULL, updated_at REAL NOT NULL);
""" + "".join(f"""
CREATE TABLE IF NOT EXISTS {table} (start INTEGER NOT NULL, label TEXT NOT NULL, client TEXT NOT NULL,
    model TEXT NOT NULL, node TEXT NOT NULL, {_SUM_COLUMNS}, PRIMARY KEY (start, client, model, node)) WITHOUT ROWID;
""" for table in TABLES)
_UPDATE = ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS)
_SELECT_SUMS = ", ".join(f"SUM({c})" for c in _SUMS)


@dataclass(frozen=True)
class Totals:
    """One group's use in a window, as `ai-server usage` shows it."""
    key: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    gpu_seconds: float
    estimated: int
    cut: int
    queue_seconds: float      # waited for an engine slot, all of them together
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "requests": self.requests, "errors": self.errors, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "gpu_seconds": self.gpu_seconds, "estimated": self.estimated,
                "cut": self.cut, "queue_seconds": self.queue_seconds, "ttft_p50_ms": self.ttft_p50_ms,
                "ttft_p95_ms": self.ttft_p95_ms}


@dataclass(frozen=True)
class Use:
    """A client's use inside its quota windows."""
    tokens_today: int = 0
    tokens_month: int = 0
    gpu_seconds_today: float = 0.0


def _totals(key: str, sums: Sums) -> Totals:
    return Totals(key, sums.requests, sums.errors, sums.input_tokens, sums.output_tokens, round(sums.gpu_ms / 1000, 3),
                  sums.estimated, sums.cut, round(sums.queue_ms / 1000, 3), percentile(sums.ttft, 0.5),
                  percentile(sums.ttft, 0.95))


def _label(value: object, by: str, group: str, tz: tzinfo) -> str:
    if group != "start":
        return str(value)
    if by == "hour":
        return windows.iso(int(value), tz)[:13] + ":00"  # type: ignore[call-overload]
    return windows.bucket(int(value), tz).day  # type: ignore[call-overload]


def _translate(err: sqlite3.Error, what: str) -> LedgerError:
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and not any(
            s in text for s in ("malformed", "not a database", "no such table", "no such column")):
        return LedgerError(f"the ledger cannot be {what}: {text}")
    return LedgerCorrupt(f"the ledger cannot be {what}: {text}")


class Ledger:
    """One connection, used from one thread at a time (the lock), WAL so readers never wait."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                           isolation_level=None)
            else:
                self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
                # A new file reclaims the pages that pruning frees (set before any table exists).
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a crash of the process loses nothing committed; a power cut can
                # lose the last transactions, which the request log's offset then reads again.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            version = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.Error as err:
            raise _translate(err, "opened") from None
        if version is None or version[0] != SCHEMA_VERSION:
            self._db.close()
            found = version[0] if version else "none"
            raise LedgerCorrupt(f"{path.name} has schema {found}, this ai-server reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def check(self) -> None:
        """PRAGMA quick_check: LedgerCorrupt when the file is damaged."""
        with self._lock:
            try:
                result = self._db.execute("PRAGMA quick_check").fetchone()
            except sqlite3.Error as err:
                raise _translate(err, "read") from None
        if result is None or result[0] != "ok":
            raise LedgerCorrupt(f"the ledger is damaged: {result[0] if result else 'no answer'}")

    # -- writing ---------------------------------------------------------------------------------

    def offset(self, spool_id: str) -> int | None:
        """How far into the request log `spool_id` the ledger has read, or None if never."""
        with self._lock:
            try:
                row = self._db.execute("SELECT offset FROM spool WHERE id = ?", (spool_id,)).fetchone()
            except sqlite3.Error as err:
                raise _translate(err, "read") from None
        return None if row is None else int(row[0])

    def add(self, records: Iterable[Ended], tz: tzinfo, spool_id: str, offset: int) -> None:
        """Metered records in, and the log position they were read up to: all or nothing."""
        self.add_batch(rollup(records, tz), spool_id, offset)

    def add_batch(self, batch: Batch, spool_id: str, offset: int) -> None:
        insert = (f"{', '.join(_SUMS)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(_SUMS))}) "
                  f"ON CONFLICT (start, client, model, node) DO UPDATE SET {_UPDATE}")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for table, rows in (("hourly", batch.hourly), ("daily", batch.daily), ("monthly", batch.monthly)):
                        self._db.executemany(f"INSERT INTO {table} (start, label, client, model, node, " + insert,
                                             [(start, label, *k, *sums.values()) for ((start, label), k), sums in rows.items()])
                    self._db.execute("INSERT INTO spool VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                                     "offset = excluded.offset, updated_at = excluded.updated_at",
                                     (spool_id, offset, time.time()))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise _translate(err, "written") from None

    def forget_spools(self, keep: Iterable[str]) -> None:
        """Positions in request logs that are gone (every one but those in `keep`)."""
        kept = list(keep)
        self._write(f"DELETE FROM spool WHERE id NOT IN ({', '.join('?' * len(kept))})", tuple(kept))

    def prune(self, now: float, keep_days: int, tz: tzinfo) -> None:
        """Drop what is older than keep_days (a month is kept whole while any of its days is
        kept), and hourly rows older than HOURLY_DAYS."""
        today = windows.bucket(now, tz).day_start
        cutoff = today - keep_days * 86400
        self._write("DELETE FROM daily WHERE start < ?", (cutoff,))
        self._write("DELETE FROM monthly WHERE start < ?", (windows.midnight(windows.bucket(cutoff, tz).day[:8] + "01", tz),))
        self._write("DELETE FROM hourly WHERE start < ?", (today - HOURLY_DAYS * 86400,))
        self._write("PRAGMA incremental_vacuum", ())

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as err:
                raise _translate(err, "written") from None

    # -- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                raise _translate(err, "read") from None

    def totals(self, since: float, until: float, by: str, tz: tzinfo, client: str | None = None) -> list[Totals]:
        """Each group's use from `since` to `until` (epoch seconds), grouped by client, model,
        node, day or hour (local), largest first (in time order by day and hour). `since` is
        read from the start of its hour (of its day, past the hourly rows' HOURLY_DAYS)."""
        if by not in BY:
            raise ValueError(f"by must be one of {', '.join(BY)}")
        where_client, extra = (" AND client = ?", (client,)) if client is not None else ("", ())
        groups: dict[str, Sums] = {}
        for table, low, high in plan(since, until, by, tz):
            # Days and hours group by their start (the primary key's order: no sort), hours of
            # a partial first day by the day they are in.
            group = by if by not in ("day", "hour") else "label" if table == "hourly" and by == "day" else "start"
            rows = self._query(f"SELECT {group}, {_SELECT_SUMS} FROM {table} WHERE start >= ? AND start < ?{where_client} "
                               f"GROUP BY {group}", (low, high, *extra))
            for name, *values in rows:
                groups.setdefault(_label(name, by, group, tz), Sums()).add(Sums.of(values))  # type: ignore[arg-type]
        found = [_totals(name, sums) for name, sums in groups.items()]
        if by in ("day", "hour"):
            return sorted(found, key=lambda t: t.key)
        return sorted(found, key=lambda t: (-(t.input_tokens + t.output_tokens), -t.requests, t.key))

    def use(self, now: float, tz: tzinfo) -> dict[str, Use]:
        """Every client's use in today's and this month's windows."""
        day, month = windows.today(now, tz), windows.this_month(now, tz)
        today = windows.midnight(day.first_day, tz)
        rows = self._query(
            "SELECT client, SUM(CASE WHEN start >= ? THEN input_tokens + output_tokens ELSE 0 END), "
            "SUM(input_tokens + output_tokens), SUM(CASE WHEN start >= ? THEN gpu_ms ELSE 0 END) "
            "FROM daily WHERE start >= ? AND start < ? GROUP BY client",
            (today, today, windows.midnight(month.first_day, tz), month.resets_at))
        return {str(c): Use(_int(t), _int(m), round(_int(g) / 1000, 3)) for c, t, m, g in rows}


def _int(value: object) -> int:
    """A SUM() SQLite gave back: an int, or NULL for no rows."""
    return value if isinstance(value, int) else 0


def plan(since: float, until: float, by: str, tz: tzinfo) -> list[tuple[str, int, float]]:
    """Which rows a window is read from (pure): (table, first start, end), coarsest first.
    By hour: hours. By day: the hours of a partial first day, then days. Otherwise the hours
    of a partial first day, the days of a partial first month, then months."""
    first = windows.bucket(since, tz)
    if by == "hour":
        return [("hourly", first.hour, until)]
    parts: list[tuple[str, int, float]] = []
    cursor = first.day_start
    hourly_from = windows.bucket(until, tz).day_start - HOURLY_DAYS * 86400
    if first.hour > first.day_start and first.day_start >= hourly_from:
        cursor = int(windows.midnight(windows.next_day(first.day), tz))
        parts.append(("hourly", first.hour, min(cursor, until)))
    if cursor >= until:
        return parts
    day = windows.bucket(cursor, tz).day
    if by != "day" and not day.endswith("-01"):
        month_end = int(windows.midnight(windows.next_month(day), tz))
        parts.append(("daily", cursor, min(month_end, until)))
        cursor = month_end
    if cursor < until:
        parts.append(("daily" if by == "day" else "monthly", cursor, until))
    return parts
