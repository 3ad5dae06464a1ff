"""The request log read into records and the ledger: the blocking half of metering, called from
a worker thread one call at a time (metering.py is the shell on the event loop).

HAProxy appends to the request log (spool.py); this reads what it appended, turns it into
records (parse.py) and commits the metered ones to the ledger in one transaction with the
offset they were read up to. The caller publishes each batch before committing it. So:
- the supervisor killed (kill -9) anywhere: its HAProxy is stopped by the next one, which reads
  that request log on from the ledger's offset before anything else. The ledger loses nothing
  and counts nothing twice; the `request` log events of the last batch before the kill may
  be written twice.
- the ledger unwritable (disk full, read-only): records are still published (log, metrics,
  quotas) and counted as unrecorded; once it can be written again the reader catches up from
  the ledger's offset, and the count goes back down.
- the ledger corrupt: the file is moved aside (usage.sqlite.corrupt-<time>), a new one begins
  and is filled from the start of the current request log; what the old file held stays in
  the file set aside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path

from ai_server.base import logs
from ai_server.base.errors import LedgerCorrupt, LedgerError
from ai_server.haproxy.metering import SPOOL, STARTS
from ai_server.observe.records import Ended, Record, Started
from ai_server.observe.usage import ledger as ledger_mod
from ai_server.observe.usage import parse
from ai_server.observe.usage.ledger import Ledger, Use
from ai_server.observe.usage.spool import Spool

BATCH_BYTES = 1 << 20   # read at most this much at once (about 3,000 requests)
RETRY_S = 5.0           # a broken ledger is tried again this often
RouteOf = Callable[[str], str]


def metered(records: list[Record]) -> list[Ended]:
    return [r for r in records if isinstance(r, Ended) and r.metered]


@dataclass
class Batch:
    """Records read from one request log, from `start` to `end`."""
    records: list[Record]
    spool: Spool
    start: int
    end: int


class Reader:
    def __init__(self, state_dir: Path, clock: Callable[[], float]) -> None:
        self.state_dir, self.clock = state_dir, clock
        self.log = logs.get()
        self.ledger: Ledger | None = None
        self.spools: list[Spool] = []    # a previous supervisor's, still to read, then the current one
        self.starts: Spool | None = None
        self.unrecorded = 0              # metered requests read but not in the ledger
        self.problem: str | None = None  # why the ledger is not written, while it is not
        self._retry_at = 0.0
        self._said = False               # ledger_failed logged for the problem now

    @property
    def path(self) -> Path:
        return self.state_dir / ledger_mod.FILE

    @property
    def current(self) -> Spool:
        return self.spools[-1]

    def prepare(self) -> int:
        """Before HAProxy starts: the ledger opened; the request logs a previous supervisor
        left set aside to be read first; a new one, whose descriptor HAProxy is to append to."""
        self._open_ledger()
        leftover = self.state_dir / SPOOL
        if (spool_id := Spool.id_of(leftover)) is not None:
            leftover.replace(self.state_dir / Spool.pending_name(spool_id))
        for path in Spool.pending_paths(self.state_dir):
            old = Spool.existing(path)
            if old is None:
                path.unlink(missing_ok=True)
                continue
            old.read_at = old.committed = self._committed(old)
            self.spools.append(old)
        current = Spool.create(self.state_dir / SPOOL)
        self.spools.append(current)
        # Start lines only matter while HAProxy runs: a new file each time.
        self.starts = Spool.create(self.state_dir / STARTS)
        if self.ledger is not None:
            try:
                self.ledger.forget_spools([s.id for s in self.spools])
            except LedgerError:
                pass
        assert current.write_fd is not None
        return current.write_fd

    def _open_ledger(self) -> None:
        try:
            ledger = Ledger(self.path)
            ledger.check()
            self.ledger = ledger
        except LedgerCorrupt as err:
            self._set_aside(str(err))
        except LedgerError as err:
            self.ledger = None
            self._fail(str(err))

    def _committed(self, spool: Spool) -> int:
        if self.ledger is None:
            return spool.start
        try:
            offset = self.ledger.offset(spool.id)
        except LedgerError:
            return spool.start
        return spool.start if offset is None else max(spool.start, offset)

    # -- reading ------------------------------------------------------------------------------

    def started(self, route_of: RouteOf) -> list[Started]:
        """Start lines written since the last call."""
        if self.starts is None:
            return []
        lines, end = self.starts.read(self.starts.read_at)
        self.starts.read_at = end
        self.starts.reclaim(end)
        found = (parse.record(line, route_of, 0.0) for line in lines)
        return [r for r in found if isinstance(r, Started)]

    def next_batch(self, route_of: RouteOf, tz: tzinfo) -> Batch | None:
        """The next records, from the oldest request log with any; None when there are none.
        A ledger that lags (it could not be written) is caught up first."""
        if self.ledger is not None and self.clock() >= self._retry_at:
            self._catch_up(route_of, tz)
        # (An old request log read to its end stays listed while the ledger lags behind it:
        # it is passed over here, not read again, and goes once the catch-up commits it.)
        for spool in list(self.spools):
            records, end = self._parse(spool, spool.read_at, route_of)
            if end > spool.read_at:
                return Batch(records, spool, spool.read_at, end)
            if spool is not self.current:
                self._finished(spool)
        return None

    def _parse(self, spool: Spool, offset: int, route_of: RouteOf, until: int | None = None) -> tuple[list[Record], int]:
        limit = BATCH_BYTES if until is None else min(BATCH_BYTES, until - offset)
        lines, end = spool.read(offset, limit)
        now = time.time()
        return [r for r in (parse.record(line, route_of, now) for line in lines) if r is not None], end

    def _finished(self, spool: Spool) -> None:
        """A previous supervisor's request log read to its end: gone, once the ledger has it
        all (or cannot have it: then it is counted as unrecorded already)."""
        if spool.committed < spool.read_at and self.ledger is not None:
            return
        spool.close()
        spool.path.unlink(missing_ok=True)
        self.spools.remove(spool)

    # -- committing ---------------------------------------------------------------------------

    def commit(self, batch: Batch, tz: tzinfo) -> None:
        """A published batch into the ledger with its offset, or counted as unrecorded (the
        ledger is broken, or still lags behind the batch's start)."""
        spool = batch.spool
        spool.read_at = batch.end
        found = metered(batch.records)
        if self.ledger is None or self.clock() < self._retry_at or spool.committed != batch.start:
            self.unrecorded += len(found)
            return
        try:
            self.ledger.add(found, tz, spool.id, batch.end)
        except LedgerCorrupt as err:
            self.unrecorded += len(found)
            self._set_aside(str(err))
            return
        except LedgerError as err:
            self.unrecorded += len(found)
            self._fail(str(err))
            return
        spool.committed = batch.end
        spool.reclaim(batch.end)
        self._recovered()

    def _catch_up(self, route_of: RouteOf, tz: tzinfo) -> None:
        """Commit what was published while the ledger could not be written."""
        assert self.ledger is not None
        for spool in self.spools:
            while spool.committed < spool.read_at:
                records, end = self._parse(spool, spool.committed, route_of, spool.read_at)
                if end == spool.committed:
                    break
                found = metered(records)
                try:
                    self.ledger.add(found, tz, spool.id, end)
                except LedgerCorrupt as err:
                    self._set_aside(str(err))
                    return
                except LedgerError as err:
                    self._fail(str(err))
                    return
                spool.committed = end
                self.unrecorded = max(0, self.unrecorded - len(found))
        self._recovered()

    # -- when the ledger fails ----------------------------------------------------------------

    def _set_aside(self, why: str) -> None:
        """The ledger file cannot be read as one: moved aside, a new one started and filled
        again from the start of every request log still here."""
        if self.ledger is not None:
            try:
                self.ledger.close()
            except Exception:  # a damaged file may fail to close too; it is set aside anyway
                pass
        self.ledger = None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                source.replace(aside.with_name(aside.name + suffix))
        self._fail(f"{why}; moved aside to {aside.name}, a new ledger started")
        try:
            self.ledger = Ledger(self.path)
        except LedgerError as err:
            self._fail(str(err))
            return
        for spool in self.spools:
            spool.committed = spool.start

    def _fail(self, problem: str) -> None:
        self._retry_at = self.clock() + RETRY_S
        self.problem = problem

    def say(self) -> None:
        """The `ledger_failed` event, once per problem: said from metering's tick, not where
        it fails, since a ledger found broken in prepare() is found before the log is set up.
        (The `alert` event is the alerts engine's, from Seen.ledger_problem.)"""
        if self.problem is not None and not self._said:
            self._said = True
            self.log.error("ledger_failed", error=self.problem, file=self.path.name,
                           reason="requests are still served and logged; the ledger misses them until it is written again")

    def _recovered(self) -> None:
        if self.problem is not None:
            self.log.info("ledger_recovered", file=self.path.name, unrecorded=self.unrecorded)
            self.problem, self._said = None, False

    # -- housekeeping -------------------------------------------------------------------------

    def reopen(self) -> None:
        """A ledger that could not be opened, tried again (every RETRY_S)."""
        if self.ledger is not None or self.clock() < self._retry_at:
            return
        self._open_ledger()
        if self.ledger is not None:
            for spool in self.spools:
                offset = self._committed(spool)
                if offset > spool.start:
                    spool.committed = offset

    def prune(self, now: float, keep_days: int, tz: tzinfo) -> None:
        if self.ledger is not None:
            try:
                self.ledger.prune(now, keep_days, tz)
            except LedgerError as err:
                self.log.warning("ledger_prune_failed", error=str(err))

    def use(self, now: float, tz: tzinfo) -> dict[str, Use]:
        """Every client's use in its quota windows, from the ledger ({} when it cannot say)."""
        if self.ledger is None:
            return {}
        try:
            return self.ledger.use(now, tz)
        except LedgerError:
            return {}

    def close(self) -> None:
        """At shutdown, HAProxy gone: a request log the ledger holds whole is removed (the next
        supervisor would otherwise read it again, wholly, were the ledger lost meanwhile)."""
        for spool in [*self.spools, *([self.starts] if self.starts else [])]:
            whole = self.ledger is not None and self.problem is None and spool.committed == spool.read_at == spool.size()
            spool.close()
            if whole and spool in self.spools:
                spool.path.unlink(missing_ok=True)
        if self.ledger is not None:
            self.ledger.close()
