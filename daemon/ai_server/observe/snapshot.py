"""The daemon at one moment, as values: what `status`, /metrics and the dashboard read.

The supervisor makes one with `Supervisor.snapshot()` whenever asked (it is cheap: no I/O);
nothing that reads it can change the daemon or see it change underneath. What HAProxy is
carrying right now (children/proxy.Load) is read separately, because that asks HAProxy.

A new field: add it here with a default, fill it in `Supervisor.snapshot()`, and (when
`status --json` should show it) in `daemon/commands.status_json`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ai_server.children.lifecycle import Snapshot as ChildSnapshot
from ai_server.children.states import Mood
from ai_server.children.warm import Warmed
from ai_server.desired import Desired
from ai_server.observe.usage.state import UsageState


@dataclass(frozen=True)
class Tls:
    domain: str | None
    not_after: str | None
    problem: str | None


@dataclass(frozen=True)
class Snapshot:
    desired: Desired                            # the config in force, with the tailnet as last read
    children: tuple[ChildSnapshot, ...] = ()    # in start order; a proxy waiting for an address says so
    mood: Mood = Mood.RUNNING
    pid: int = 0                                # the supervisor's
    proxy_waiting: str | None = None            # why the proxy cannot serve yet
    engine_listen: tuple[str, int] | None = None
    loaded_at: str | None = None                # when the config in force was read (ISO 8601, UTC)
    config_error: str | None = None             # the last reload's, while the last good config stays
    tls: Tls | None = None                      # when proxy.tls = "tailscale"
    nodes: tuple[str, ...] = ()                 # a front's nodes, by name
    warm: tuple[Warmed, ...] = ()
    audit_age_s: float | None = None            # since the engine's sockets were last audited
    slots: int = 0                              # the engine's generation slots
    usage: UsageState | None = None             # the ledger's health, use against quotas

    def child(self, name: str) -> ChildSnapshot | None:
        return next((c for c in self.children if c.name == name), None)
