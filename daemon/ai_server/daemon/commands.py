"""What the control socket answers: status, start/stop/restart, reload, warm, clients, nodes.

Each command is a small async generator of answers (progress lines, then one with "ok"). It
reads the daemon through a snapshot (a value) and acts through the few methods of `Daemon`;
the answers are built by pure functions of what it read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ai_server.access.clients import UNKNOWN
from ai_server.base.errors import AiServerError
from ai_server.base.netaddr import host_port
from ai_server.children.proxy import Load
from ai_server.desired import Desired
from ai_server.observe.snapshot import Snapshot
from ai_server.observe.usage.state import UsageState

Answers = AsyncIterator[dict[str, Any]]


class Daemon(Protocol):
    """What a command may ask of the daemon (the Supervisor is one)."""

    def snapshot(self) -> Snapshot: ...

    async def load(self) -> Load | None: ...

    async def start(self, names: list[str], reason: str) -> None: ...

    async def stop(self, names: list[str], reason: str) -> None: ...

    async def restart(self, names: list[str], reason: str) -> None: ...

    async def reload(self, why: str) -> dict[str, Any]: ...

    def warm(self, models: list[str], pull: bool) -> Answers: ...

    async def nodes(self, action: str | None, name: str) -> list[dict[str, Any]]: ...


# -- answers, from what was read (pure) ----------------------------------------------------------


def status_json(snap: Snapshot) -> dict[str, Any]:
    """`status --json`, and what start/stop/restart answer with."""
    cfg = snap.desired.config
    children = [{"name": c.name, "state": c.state.value, "pid": c.pid,
                 "uptime_s": None if c.uptime_s is None else round(c.uptime_s, 1),
                 "restarts": c.restarts, "failures": c.failures, "description": c.description}
                for c in snap.children]
    tls = None if snap.tls is None else {"domain": snap.tls.domain, "not_after": snap.tls.not_after,
                                         "problem": snap.tls.problem}
    return {
        "children": children,
        "proxy": {
            "listen": [host_port(a, cfg.proxy.port) for a in snap.desired.addresses],
            "waiting": snap.proxy_waiting,
            "enabled": cfg.proxy.enabled,
            "engine_listen": None if snap.engine_listen is None else host_port(*snap.engine_listen),
            "rules": len(snap.desired.allowlist.rules),
            "nodes": list(snap.nodes),
            "loaded_at": snap.loaded_at,
            "config_error": snap.config_error,
            "tailnet": {"peers": len(snap.desired.peers), "known": snap.desired.peers_known,
                        "stale_since": snap.desired.tailnet_view.stale_since,
                        "problem": snap.desired.tailnet_view.cli_problem},
            "tls": tls,
        },
        "warm": [w.as_dict() for w in snap.warm],
        "supervisor": {"pid": snap.pid, "mood": snap.mood.value},
        "usage": None if snap.usage is None else snap.usage.as_json(),
    }


def targets(snap: Snapshot, name: str) -> list[str]:
    """The children `name` means ("all": every one), in start order."""
    names = [c.name for c in snap.children]
    if name == "all":
        return names
    if name not in names:
        raise AiServerError(f"no child named {name!r} (children: {', '.join(names)}, or all)")
    return [name]


def client_rows(desired: Desired, load: Load | None, usage: UsageState | None = None) -> list[dict[str, Any]]:
    """Each client: how it is identified, its policy, its load now, and its use today against
    its quotas."""
    peers: dict[str, list[dict[str, Any]]] = {c.name: [] for c in desired.clients.clients}
    for peer in desired.peers:
        owner = desired.clients.owner(peer)
        if owner is not None:
            peers[owner].append({"device": peer.device or peer.dns_name or peer.host_name, "addresses": list(peer.addresses)})
    entries = [(c.name, c.kind, c.value, c.policy) for c in desired.clients.clients]
    entries.append((UNKNOWN, "unknown", "allow" if desired.clients.unknown_allowed else "deny", desired.clients.defaults))
    in_flight, last_minute = (load.clients, load.last_minute) if load is not None else ({}, {})
    used = usage.as_json() if usage is not None else {"today": {}, "quotas": []}
    standing: dict[str, dict[str, Any]] = {}
    for item in used["quotas"]:
        standing.setdefault(item["client"], {})[item["quota"]] = {
            k: item[k] for k in ("used", "limit", "ratio", "resets_at", "over")}
    rows = []
    for name, kind, value, policy in entries:
        rows.append({
            "name": name, "identity": {"kind": kind, "value": value[:12] + "..." if kind == "token_sha256" else value},
            "peers": peers.get(name, []),
            "policy": {"paths": None if policy.paths is None else list(policy.paths), "models": list(policy.models),
                       "rpm": policy.rpm, "concurrency": policy.concurrency, "priority": policy.priority,
                       "tokens_per_day": policy.tokens_per_day, "tokens_per_month": policy.tokens_per_month,
                       "gpu_seconds_per_day": policy.gpu_seconds_per_day, "max_seconds": policy.max_seconds},
            "in_flight": in_flight.get(name, 0), "last_minute": last_minute.get(name, 0),
            "today": used["today"].get(name, {"tokens": 0, "tokens_month": 0, "gpu_seconds": 0.0}),
            "quotas": standing.get(name, {}),
        })
    return rows


# -- the commands ------------------------------------------------------------------------------


class Commands:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self._table: dict[str, Callable[[dict[str, Any]], Answers]] = {
            "status": self.status, "start": self.start, "stop": self.stop, "restart": self.restart,
            "reload": self.reload, "warm": self.warm, "clients": self.clients, "nodes": self.nodes,
        }

    async def handle(self, command: str, args: dict[str, Any]) -> Answers:
        handler = self._table.get(command)
        if handler is None:
            yield {"ok": False, "error": f"unknown command {command!r}"}
            return
        try:
            async for answer in handler(args):
                yield answer
        except AiServerError as err:
            yield {"ok": False, "error": str(err)}

    def _done(self) -> dict[str, Any]:
        return {"ok": True, **status_json(self.daemon.snapshot())}

    async def status(self, args: dict[str, Any]) -> Answers:
        snap, load = self.daemon.snapshot(), await self.daemon.load()
        yield {"ok": True, **status_json(snap), "load": None if load is None else load.as_json()}

    async def start(self, args: dict[str, Any]) -> Answers:
        await self.daemon.start(targets(self.daemon.snapshot(), str(args.get("name", ""))), "requested by start")
        yield self._done()

    async def stop(self, args: dict[str, Any]) -> Answers:
        await self.daemon.stop(targets(self.daemon.snapshot(), str(args.get("name", ""))), "requested by stop")
        yield self._done()

    async def restart(self, args: dict[str, Any]) -> Answers:
        await self.daemon.restart(targets(self.daemon.snapshot(), str(args.get("name", ""))), "requested by restart")
        yield self._done()

    async def reload(self, args: dict[str, Any]) -> Answers:
        yield await self.daemon.reload("requested by reload")

    async def clients(self, args: dict[str, Any]) -> Answers:
        snap = self.daemon.snapshot()
        yield {"ok": True, "clients": client_rows(snap.desired, await self.daemon.load(), snap.usage)}

    async def nodes(self, args: dict[str, Any]) -> Answers:
        """The machines behind this front; `drain` / `undrain` one of them."""
        action = args.get("action")
        rows = await self.daemon.nodes(str(action) if action else None, str(args.get("name") or ""))
        yield {"ok": True, "nodes": rows}

    async def warm(self, args: dict[str, Any]) -> Answers:
        models = [str(m) for m in args.get("models") or []]
        async for message in self.daemon.warm(models, bool(args.get("pull", True))):
            yield message
