"""What the supervisor hands observe/: the dashboard's state, the gate's audience. observe/ never
reads the supervisor itself; these functions are the one place that does."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from ai_server.base.errors import HaproxyRuntimeError
from ai_server.base.paths import Paths
from ai_server.children.proxy import ProxyChild
from ai_server.children.states import State
from ai_server.desired import Desired
from ai_server.fleet.fleet import Fleet
from ai_server.haproxy import runtime
from ai_server.haproxy.render import LIVE_TABLE
from ai_server.observe import gate
from ai_server.observe.alerts import Seen
from ai_server.observe.dashboard.app import in_flight


class Supervisor(Protocol):
    """The parts of the supervisor read here (a Protocol: importing it would be a cycle)."""
    desired: Desired
    paths: Paths
    proxy: ProxyChild
    fleet: Fleet
    commands: Any
    alerts: Any


def audience(sup: Supervisor) -> gate.Audience:
    desired = sup.desired
    return gate.Audience(clients=desired.clients, peers=desired.peers,
                         names=tuple(dict.fromkeys((*desired.names, *desired.config.proxy.server_names))))


def _from_haproxy(sup: Supervisor) -> dict[str, Any]:
    """Blocking: the queue and slots, what is generating now, the nodes."""
    out: dict[str, Any] = {"load": None, "inflight": [], "nodes": []}
    if sup.desired.config.proxy.enabled and sup.proxy.child.state == State.RUNNING:
        try:
            out["load"] = sup.proxy.load()
            out["inflight"] = in_flight(runtime.table(sup.paths.haproxy_stats_socket, LIVE_TABLE))
        except HaproxyRuntimeError:
            pass
    if sup.fleet.active:
        out["nodes"] = sup.fleet.snapshot()
    return out


async def dashboard_state(sup: Supervisor) -> dict[str, Any]:
    """Everything the page shows but the request feed."""
    snapshot = sup.commands.snapshot()
    live = await asyncio.to_thread(_from_haproxy, sup)
    desired = sup.desired
    return {
        **snapshot,
        **live,
        "allowlist": [(rule.path, list(rule.methods)) for rule in desired.allowlist.rules],
        "client_names": [c.name for c in desired.clients.clients],
        "alerts": sup.alerts.open_alerts(),
        "usage": None,
    }


async def seen(sup: Supervisor) -> Seen:
    """What the alert conditions read, once a second: cheap, but for the nodes' health (HAProxy's
    stats, only on a front)."""
    snapshot = sup.commands.snapshot()
    tls = (snapshot["proxy"].get("tls") or {}).get("problem")
    nodes = await asyncio.to_thread(sup.fleet.snapshot) if sup.fleet.active else []
    return Seen(children=tuple((c["name"], c["state"], int(c["restarts"] or 0), str(c["description"] or ""))
                               for c in snapshot["children"]),
                config_error=snapshot["proxy"].get("config_error"), tls_problem=tls,
                nodes=tuple((n["name"], n["state"]) for n in nodes))


def host_name() -> str:
    return socket.gethostname().split(".", 1)[0]
