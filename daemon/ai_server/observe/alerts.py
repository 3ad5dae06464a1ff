"""When something needs the owner: conditions over what the supervisor sees, as alerts that fire
once and resolve once (pure, with an injectable clock).

The supervisor hands over a `Seen` every second and every refused request as it is logged;
`observe` answers with the changes: an alert firing when its condition becomes true, resolved
when it stops being true. An alert open is not sent again while it stays open, whatever its
message becomes meanwhile. The conditions:

    child_fatal      engine or proxy FATAL (gave up restarting)
    loopback_audit   the engine was found listening beyond loopback (and killed: FATAL too)
    restart_loop     a child restarted `restarts` times within `restart_minutes`
    node_down        a node stopped answering its health check (resolved: back up)
    quota_warning    a client past 80% of a quota; quota_exhausted at 100%
    probing          a client refused `refusals_per_minute` times in a minute (resolved below half)
    config_error     a config file is broken and the last good config stays in force
    tls_renewal      no HTTPS certificate could be had (proxy.tls = "tailscale")
    ledger           the usage ledger cannot be written
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ai_server.observe.records import Ended, Record

CONDITIONS = ("child_fatal", "loopback_audit", "restart_loop", "node_down", "quota_warning", "quota_exhausted",
              "probing", "config_error", "tls_renewal", "ledger")
# The proxy's own refusals (never the engine's answers): what a client probing for what it
# may not do collects. 429 and 503 are load, not probing.
REFUSALS = frozenset({400, 401, 403, 405, 411, 413, 414, 421, 431})


@dataclass(frozen=True)
class Rules:
    restarts: int = 3
    restart_minutes: float = 10.0
    refusals_per_minute: int = 20


@dataclass(frozen=True)
class Seen:
    """One look at the supervisor: what the conditions read."""
    children: tuple[tuple[str, str, int, str], ...] = ()   # name, state, restarts, description
    config_error: str | None = None
    tls_problem: str | None = None
    nodes: tuple[tuple[str, str], ...] = ()                # name, health (UP, DOWN, DRAIN, ...)
    quotas: tuple[tuple[str, str, float], ...] = ()        # client, quota, share used (1.0 = all of it)
    ledger_problem: str | None = None


@dataclass(frozen=True)
class Alert:
    condition: str
    subject: str            # what it is about: a child, a node, a client ("" for the server itself)
    message: str
    severity: str           # "critical" | "warning"
    since: float            # seconds since the epoch

    def as_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "subject": self.subject, "message": self.message,
                "severity": self.severity, "since": self.since}


@dataclass(frozen=True)
class Change:
    alert: Alert
    state: str              # "firing" | "resolved"
    at: float
    message: str            # what the owner reads: the alert's message, or how it resolved


Key = tuple[str, str]


@dataclass
class Alerts:
    rules: Rules = field(default_factory=Rules)
    clock: Callable[[], float] = time.time
    open: dict[Key, Alert] = field(default_factory=dict)
    _restarts: dict[str, tuple[int, deque[float]]] = field(default_factory=dict)
    _refusals: dict[str, deque[float]] = field(default_factory=dict)

    def record(self, record: Record) -> None:
        """A RecordBus subscriber: a refusal by the proxy counts against whoever sent it."""
        if isinstance(record, Ended) and record.status in REFUSALS and not record.forwarded:
            key = record.client if record.client != "unknown" else f"unknown ({record.address or '?'})"
            self._refusals.setdefault(key, deque(maxlen=10 * self.rules.refusals_per_minute)).append(self.clock())

    def observe(self, seen: Seen) -> list[Change]:
        now = self.clock()
        true_now = {**self._children(seen, now), **self._probing(now), **_server(seen)}
        changes = []
        for key, (message, severity) in true_now.items():
            if key not in self.open:
                alert = Alert(key[0], key[1], message, severity, now)
                self.open[key] = alert
                changes.append(Change(alert, "firing", now, message))
            elif self.open[key].message != message:
                self.open[key] = replace(self.open[key], message=message)  # shown, not sent again
        for key in [k for k in self.open if k not in true_now]:
            alert = self.open.pop(key)
            changes.append(Change(alert, "resolved", now, _resolved(alert)))
        return changes

    def open_alerts(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in sorted(self.open.values(), key=lambda a: a.since)]

    def _children(self, seen: Seen, now: float) -> dict[Key, tuple[str, str]]:
        out: dict[Key, tuple[str, str]] = {}
        window = self.rules.restart_minutes * 60
        for name, state, restarts, description in seen.children:
            if description.startswith("security:"):
                out[("loopback_audit", name)] = (f"{name} was stopped: {description}", "critical")
            elif state == "FATAL":
                out[("child_fatal", name)] = (f"{name} is FATAL: {description}", "critical")
            last, times = self._restarts.get(name, (restarts, deque()))
            times.extend([now] * max(0, restarts - last))   # the first look is the baseline
            while times and times[0] <= now - window:
                times.popleft()
            self._restarts[name] = (restarts, times)
            if len(times) >= self.rules.restarts:
                out[("restart_loop", name)] = (f"{name} restarted {len(times)} times in the last "
                                               f"{self.rules.restart_minutes:g} minutes", "warning")
        return out

    def _probing(self, now: float) -> dict[Key, tuple[str, str]]:
        out: dict[Key, tuple[str, str]] = {}
        for who, times in list(self._refusals.items()):
            while times and times[0] <= now - 60:
                times.popleft()
            # Fires at the threshold, stays open until under half of it: no flapping at the edge.
            needed = self.rules.refusals_per_minute if ("probing", who) not in self.open \
                else max(1, self.rules.refusals_per_minute // 2)
            if len(times) >= needed:
                out[("probing", who)] = (f"{who} was refused {len(times)} times in the last minute", "warning")
            elif not times:
                del self._refusals[who]
        return out


def _server(seen: Seen) -> dict[Key, tuple[str, str]]:
    out: dict[Key, tuple[str, str]] = {}
    for name, health in seen.nodes:
        if health == "DOWN":
            out[("node_down", name)] = (f"node {name} is down: it does not answer its health check", "warning")
    for client, quota, share in seen.quotas:
        if share >= 1.0:
            out[("quota_exhausted", f"{client} {quota}")] = (f"{client} has used all of its {quota} "
                                                             f"({share:.0%}): refused until it resets", "warning")
        if share >= 0.8:
            out[("quota_warning", f"{client} {quota}")] = (f"{client} has used {share:.0%} of its {quota}", "warning")
    if seen.config_error:
        out[("config_error", "")] = (f"{seen.config_error} (the last good config stays in force)", "warning")
    if seen.tls_problem:
        out[("tls_renewal", "")] = (f"no HTTPS certificate: {seen.tls_problem}", "warning")
    if seen.ledger_problem:
        out[("ledger", "")] = (f"the usage ledger cannot be written: {seen.ledger_problem}", "critical")
    return out


def _resolved(alert: Alert) -> str:
    if alert.condition == "node_down":
        return f"node {alert.subject} is back up"
    what = f"{alert.condition} ({alert.subject})" if alert.subject else alert.condition
    return f"resolved: {what}"
