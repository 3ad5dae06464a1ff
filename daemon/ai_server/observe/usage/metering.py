"""Metering in the supervisor: the request log read every POLL_S (reader.py, in a worker thread),
each record published on the event loop, then committed; quotas kept current; the usage the
snapshot, `status`, `clients`, /metrics and the dashboard show.

    metering = Metering(state_dir, desired)
    fd = metering.prepare()                 # blocking, before HAProxy starts: the descriptor it logs to
    await metering.run(publish, on_refused)  # until cancelled
    metering.apply(desired)                 # a reload
    metering.state()                        # a UsageState, for the snapshot (no I/O)

Quotas: each record adds to its client's tally (by the local day and month it ended in, from
the ledger's sums at start); who is over a quota is handed to `on_refused` (the proxy's quota
map) whenever that changes, within one POLL_S of the line that crossed it being written.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from ai_server.access import allowlist
from ai_server.base import logs
from ai_server.base.errors import HaproxyRuntimeError, LedgerError
from ai_server.base.zones import zone
from ai_server.desired import Desired
from ai_server.haproxy import runtime
from ai_server.observe.dashboard import usage as dashboard_usage
from ai_server.observe.records import Ended, Record
from ai_server.observe.usage import quota, windows
from ai_server.observe.usage.reader import Reader, RouteOf
from ai_server.observe.usage.state import UsageState

POLL_S = 0.1
PRUNE_EVERY_S = 3600.0
DROPPED_EVERY_S = 5.0    # how often HAProxy's count of log lines it could not write is read
DASHBOARD_EVERY_S = 10.0  # the dashboard's usage section is read from the ledger at most this often
RECENT = 10_000          # ids of requests that ended, so a late start line is not shown as running
# A test seam (tests/harness.py `timers`): the epoch second this supervisor's calendar starts
# at, so a test can stand a few seconds before midnight. None: the real clock.
CALENDAR_FROM: float | None = None
_STARTED = time.time()

Publish = Callable[[Record], None]
# client -> (quota, used, limit, reset epoch, resets_at): maps.quota_map's entries.
Refused = dict[str, tuple[str, float, int, float, str]]


def skew() -> float:
    return 0.0 if CALENDAR_FROM is None else CALENDAR_FROM - _STARTED


def wall_clock() -> float:
    return time.time() + skew()


class Metering:
    def __init__(self, state_dir: Path, desired: Desired, clock: Callable[[], float] = wall_clock,
                 stats_socket: Path | None = None) -> None:
        self.desired, self.clock, self.stats_socket = desired, clock, stats_socket
        self.reader = Reader(state_dir, clock)
        self.log = logs.get()
        self.tally = quota.Tally()
        self.refused: dict[str, quota.Standing] = {}
        self._warned: set[tuple[str, str, float]] = set()
        self._ended_ids: dict[str, None] = {}
        self._zone: tuple[str, tzinfo] | None = None
        self._tally_zone = desired.config.usage.timezone
        self._pruned_at = 0.0
        self._dropped_at = 0.0
        self._dropped_seen = 0
        self.log_dropped: int | None = None   # HAProxy's DroppedLogs, summed across its restarts
        self._dashboard: tuple[float, dict[str, Any]] | None = None

    @property
    def tz(self) -> tzinfo:
        name = self.desired.config.usage.timezone
        if self._zone is None or self._zone[0] != name:
            self._zone = (name, zone(name))
        return self._zone[1]

    def prepare(self) -> int:
        """Blocking, before HAProxy starts: the ledger opened, the request log HAProxy is to
        append to created (its descriptor returned), the quota tallies read from the ledger."""
        fd = self.reader.prepare()
        now = self.clock()
        self.tally = quota.Tally.starting(self.reader.use(now, self.tz), now, self.tz)
        return fd

    def apply(self, desired: Desired) -> None:
        """A reload: the clients' quotas, [usage], the allowlist's routes."""
        self.desired = desired

    def _route_of(self) -> RouteOf:
        rules = self.desired.allowlist
        return lambda path: allowlist.route(rules, path)

    # -- running ----------------------------------------------------------------------------------

    async def run(self, publish: Publish, on_refused: Callable[[Refused], Awaitable[None]]) -> None:
        while True:
            try:
                await self.tick(publish, on_refused)
            except Exception:  # a bug here must not end metering for good
                self.log.exception("metering_failed")
            await asyncio.sleep(POLL_S)

    async def tick(self, publish: Publish, on_refused: Callable[[Refused], Awaitable[None]] | None = None) -> None:
        """Read what is there (off the loop), publish it (on the loop), commit it (off the
        loop); then quotas and housekeeping. Start lines first: a request that began and ended
        since the last look is published in that order."""
        route_of, tz, reader = self._route_of(), self.tz, self.reader
        reader.say()
        for started in await asyncio.to_thread(reader.started, route_of):
            if started.id not in self._ended_ids:
                publish(started)
        while (batch := await asyncio.to_thread(reader.next_batch, route_of, tz)) is not None:
            self._publish(batch.records, publish, tz)
            await asyncio.to_thread(reader.commit, batch, tz)
        if on_refused is not None:
            await self._quotas(on_refused)
        await self._housekeeping()

    def _publish(self, records: list[Record], publish: Publish, tz: tzinfo) -> None:
        for record in records:
            if isinstance(record, Ended):
                self.tally.add(record, tz)
                if record.id:
                    self._ended_ids[record.id] = None
                    if len(self._ended_ids) > RECENT:
                        del self._ended_ids[next(iter(self._ended_ids))]
            publish(record)

    async def _housekeeping(self) -> None:
        now, mono = self.clock(), time.monotonic()
        await asyncio.to_thread(self.reader.reopen)
        if self.desired.config.usage.timezone != self._tally_zone:
            # Days and months are another zone's now: the tallies are read again.
            self._tally_zone = self.desired.config.usage.timezone
            use = await asyncio.to_thread(self.reader.use, now, self.tz)
            self.tally = quota.Tally.starting(use, now, self.tz)
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            await asyncio.to_thread(self.reader.prune, now, self.desired.config.usage.keep_days, self.tz)
        if self.stats_socket is not None and mono - self._dropped_at >= DROPPED_EVERY_S:
            self._dropped_at = mono
            await asyncio.to_thread(self._read_dropped, self.stats_socket)

    def _read_dropped(self, stats_socket: Path) -> None:
        """HAProxy's DroppedLogs (a new worker counts from 0 again): any increase is a request
        that may be missing from the request log, and is said so."""
        try:
            info = runtime.command(stats_socket, "show info", timeout=2.0)
        except HaproxyRuntimeError:
            return
        found = re.search(r"^DroppedLogs: (\d+)$", info, re.M)
        if found is None:
            return
        count = int(found.group(1))
        fresh = count - self._dropped_seen if count >= self._dropped_seen else count
        self._dropped_seen = count
        self.log_dropped = (self.log_dropped or 0) + fresh
        if fresh:
            self.log.error("log_dropped", lines=fresh, total=self.log_dropped,
                           reason="HAProxy could not write these access-log lines: those requests are not metered")

    # -- quotas -----------------------------------------------------------------------------------

    async def _quotas(self, on_refused: Callable[[Refused], Awaitable[None]]) -> None:
        now, tz = self.clock(), self.tz
        self.tally.forget_before(now, tz)
        found = quota.standings(self.desired.clients, self.tally, now, tz)
        for s in quota.warnings(found, self._warned):
            self.log.warning("quota_warning", client=s.client, quota=s.quota, used=s.used, limit=s.limit,
                             ratio=round(s.ratio, 3), resets_at=windows.iso(s.resets_at, tz))
        refused = quota.refused(found)
        if refused == self.refused:
            return
        before, self.refused = self.refused, refused
        await on_refused(self.over_quota())
        # Logged once the proxy refuses them (or lets them through again), not before.
        for client, s in refused.items():
            if client not in before:
                self.log.warning("quota_exceeded", client=client, quota=s.quota, used=s.used, limit=s.limit,
                                 resets_at=windows.iso(s.resets_at, tz))
        for client in before.keys() - refused.keys():
            self.log.info("quota_reset", client=client, quota=before[client].quota)

    def over_quota(self) -> Refused:
        """Who is refused now, as maps.quota_map takes it: the reset in real epoch seconds (what
        HAProxy's clock compares it with)."""
        tz = self.tz
        return {client: (s.quota, s.used, s.limit, s.resets_at - skew(), windows.iso(s.resets_at, tz))
                for client, s in self.refused.items()}

    # -- what others read -----------------------------------------------------------------------

    def state(self) -> UsageState:
        """Usage now, as a value (no I/O)."""
        now, tz, clients = self.clock(), self.tz, self.desired.clients
        names = [c.name for c in clients.clients] + ["unknown"]
        return UsageState(tz=tz, ledger_file=str(self.reader.path), problem=self.reader.problem,
                          unrecorded=self.reader.unrecorded,
                          today=tuple((name, self.tally.use(name, now, tz)) for name in names),
                          standings=tuple(quota.standings(clients, self.tally, now, tz)), log_dropped=self.log_dropped)

    async def dashboard(self) -> dict[str, Any] | None:
        """The dashboard's usage section (observe/dashboard/usage.py), read from the ledger off
        the loop, at most every DASHBOARD_EVERY_S. None while there is no ledger."""
        mono = time.monotonic()
        if self._dashboard is not None and mono - self._dashboard[0] < DASHBOARD_EVERY_S:
            return self._dashboard[1]
        ledger = self.reader.ledger
        if ledger is None:
            return None
        try:
            section = await asyncio.to_thread(dashboard_usage.read, ledger, self.clock(), self.tz, self.state().limits())
        except LedgerError:  # set aside meanwhile, say: the last one until the next look
            return self._dashboard[1] if self._dashboard else None
        self._dashboard = (mono, section)
        return section

    def close(self) -> None:
        self.reader.close()
