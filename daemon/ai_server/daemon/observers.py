"""The observing half of the daemon: request records and their subscribers, /metrics and the
dashboard on [metrics] listen, alerts and their webhook. observe/ never reads the supervisor
itself; this reads only what the `Daemon` protocol offers: its snapshot (a value), what HAProxy
carries now, the fleet's rows and the engine's own metrics.

A new subscriber to request records: `self.records.subscribe(fn)` in `Observers.__init__`
(observe/records.py says what fn may do). A new observing task: one more in `tasks()`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from ai_server.base.errors import HaproxyRuntimeError
from ai_server.children.proxy import Load
from ai_server.daemon import background
from ai_server.daemon.commands import status_json
from ai_server.desired import Desired
from ai_server.haproxy import runtime
from ai_server.haproxy.render import LIVE_TABLE
from ai_server.observe import gate, health, http, metrics, requests
from ai_server.observe.alerts import Alerts, Rules, Seen
from ai_server.observe.dashboard.app import Dashboard, in_flight
from ai_server.observe.feed import Feed
from ai_server.observe.records import Record, RecordBus
from ai_server.observe.snapshot import Snapshot
from ai_server.observe.usage.metering import Metering
from ai_server.observe.webhook import Deliverer


class Daemon(Protocol):
    """What the observers read of the supervisor (a Protocol: importing it would be a cycle)."""
    stats_socket: Path

    def snapshot(self) -> Snapshot: ...

    async def load(self) -> Load | None: ...

    async def node_rows(self) -> list[dict[str, Any]]: ...

    async def engine_samples(self) -> list[tuple[str, str, str, dict[str, str], float]]: ...


class Observers:
    def __init__(self, daemon: Daemon, metering: Metering) -> None:
        self.daemon, self.metering = daemon, metering
        self.recorder = metrics.Recorder()
        # Request records (observe/records.py): the `request` log event, metrics, the dashboard's
        # requests, and the alerts (refusals count towards "probing").
        self.records = RecordBus()
        self.feed = Feed()
        self.alerts = Alerts()
        self._access_log = True   # [proxy] access_log: the `request` event (metering reads the log either way)
        for subscriber in (self._log_request, self.recorder.record, self.feed.record, self.alerts.record):
            self.records.subscribe(subscriber)
        self.webhook = Deliverer(host_name())
        self.dashboard = Dashboard(self.feed, self.dashboard_state, lambda: audience(daemon.snapshot().desired),
                                   self.scrape, host_name())
        self._http = http.Server(self.dashboard)
        self._http_at: list[tuple[str, int]] | None = None

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [("dashboard", self.dashboard.run()), ("webhook", self.webhook.run()),
                ("alerts", background.watch_alerts(self.alerts, self.seen, self.webhook))]

    async def apply(self, desired: Desired) -> None:
        """The alert rules and webhook, and where /metrics and the dashboard listen (bound again
        only when that changed)."""
        self._access_log = desired.config.proxy.access_log
        a = desired.config.alerts
        self.alerts.rules = Rules(a.restarts, a.restart_minutes, a.refusals_per_minute)
        self.webhook.configure(a.webhook, a.format)
        wanted = metrics.addresses(desired.config.metrics.listen, desired.addresses)
        if wanted != self._http_at:
            await self._http.bind(wanted)
            self._http_at = wanted

    def close(self) -> None:
        self._http.close()

    def _log_request(self, record: Record) -> None:
        if self._access_log:
            requests.log_request(record)

    async def scrape(self) -> str:
        snapshot, load = self.daemon.snapshot(), await self.daemon.load()
        live = metrics.live(snapshot, load, await self.daemon.engine_samples())
        return metrics.render(self.recorder, live) + health.render(await self.seen(), self.alerts.open_alerts())

    async def dashboard_state(self) -> dict[str, Any]:
        """Everything the page shows but the request feed."""
        snapshot, load = self.daemon.snapshot(), await self.daemon.load()
        generating = [] if load is None else await asyncio.to_thread(_generating, self.daemon.stats_socket)
        desired = snapshot.desired
        return {
            **status_json(snapshot),
            "load": None if load is None else load.as_json(),
            "inflight": generating,
            "nodes": await self.daemon.node_rows(),
            "allowlist": [(rule.path, list(rule.methods)) for rule in desired.allowlist.rules],
            "client_names": [c.name for c in desired.clients.clients],
            "alerts": self.alerts.open_alerts(),
            "usage": await self.metering.dashboard(),
        }

    async def seen(self) -> Seen:
        """What the alert conditions read, once a second: cheap, but for the nodes' health
        (HAProxy's stats, only on a front)."""
        snapshot = self.daemon.snapshot()
        nodes = await self.daemon.node_rows()
        usage = snapshot.usage
        return Seen(children=tuple((c.name, c.state.value, c.restarts, c.description) for c in snapshot.children),
                    config_error=snapshot.config_error, tls_problem=None if snapshot.tls is None else snapshot.tls.problem,
                    nodes=tuple((n["name"], n["state"]) for n in nodes),
                    quotas=() if usage is None else usage.quotas, ledger_problem=None if usage is None else usage.problem)


def audience(desired: Desired) -> gate.Audience:
    return gate.Audience(clients=desired.clients, peers=desired.peers,
                         names=tuple(dict.fromkeys((*desired.names, *desired.config.proxy.server_names))))


def _generating(stats_socket: Path) -> list[Any]:
    """Blocking: what is generating now (HAProxy's live table)."""
    try:
        return in_flight(runtime.table(stats_socket, LIVE_TABLE))
    except HaproxyRuntimeError:
        return []


def host_name() -> str:
    return socket.gethostname().split(".", 1)[0]
