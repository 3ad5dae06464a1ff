"""What the control socket answers: status, start/stop/restart, reload, warm.

Each command is a small async generator of answers (progress lines, then one with "ok").
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from ai_server.access.clients import UNKNOWN
from ai_server.base.errors import AiServerError, HaproxyRuntimeError
from ai_server.base.netaddr import host_port
from ai_server.children.process import Child, Role
from ai_server.children.states import State
from ai_server.haproxy import runtime

if TYPE_CHECKING:
    from ai_server.daemon.supervisor import Supervisor

Answers = AsyncIterator[dict[str, Any]]


class Commands:
    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor
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

    # -- status ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        sup = self.sup
        desired = sup.desired
        cfg = desired.config
        waiting = sup.proxy.waiting(desired) if cfg.proxy.enabled else None
        children = []
        for child in sup.children:
            snap = child.snapshot()
            description = snap.description
            if child.role is Role.PROXY and waiting and snap.state == State.STOPPED:
                description = waiting
            children.append({"name": snap.name, "state": snap.state.value, "pid": snap.pid,
                             "uptime_s": None if snap.uptime_s is None else round(snap.uptime_s, 1),
                             "restarts": snap.restarts, "failures": snap.failures,
                             "description": description})
        bind = sup.engine.bind if sup.engine.present else None
        return {
            "children": children,
            "proxy": {
                "listen": [host_port(a, cfg.proxy.port) for a in desired.addresses],
                "waiting": waiting,
                "enabled": cfg.proxy.enabled,
                "engine_listen": None if bind is None else host_port(*bind),
                "rules": len(desired.allowlist.rules),
                "nodes": sorted(sup.fleet.states),
                "loaded_at": sup.loaded_at,
                "config_error": sup.config_error,
                "tls": None if cfg.proxy.tls != "tailscale" else {
                    "domain": getattr(sup.proxy.certificate, "domain", None),
                    "not_after": getattr(sup.proxy.certificate, "not_after", None),
                    "problem": sup.proxy.tls_problem},
            },
            "warm": sup.engine.warmer.status(),
            "supervisor": {"pid": os.getpid(), "mood": sup.mood.value},
        }

    async def load(self) -> dict[str, Any] | None:
        if not self.sup.desired.config.proxy.enabled or self.sup.proxy.child.state != State.RUNNING:
            return None
        try:
            return await asyncio.to_thread(self.sup.proxy.load)
        except HaproxyRuntimeError:
            return None

    async def status(self, args: dict[str, Any]) -> Answers:
        yield {"ok": True, **self.snapshot(), "load": await self.load()}

    # -- children --------------------------------------------------------------------------------

    def _targets(self, name: str) -> list[Child]:
        children = self.sup.children  # in start order
        if name == "all":
            return children
        found = [c for c in children if c.name == name]
        if not found:
            known = ", ".join(c.name for c in children)
            raise AiServerError(f"no child named {name!r} (children: {known}, or all)")
        return found

    async def start(self, args: dict[str, Any]) -> Answers:
        for child in self._targets(str(args.get("name", ""))):
            await self.sup.start_child(child, "requested by start")
        yield {"ok": True, **self.snapshot()}

    async def stop(self, args: dict[str, Any]) -> Answers:
        for child in reversed(self._targets(str(args.get("name", "")))):
            await child.stop("requested by stop")
        yield {"ok": True, **self.snapshot()}

    async def restart(self, args: dict[str, Any]) -> Answers:
        targets = self._targets(str(args.get("name", "")))
        engine = self.sup.engine
        if targets == [engine.child]:
            # Alone, the engine is drained first: no generation in flight is cut.
            await engine.restart("requested by restart", fresh=True)
            await engine.settled()
            yield {"ok": True, **self.snapshot()}
            return
        for child in reversed(targets):
            await child.stop("requested by restart")
        for child in targets:
            await self.sup.start_child(child, "requested by restart")
        yield {"ok": True, **self.snapshot()}

    async def reload(self, args: dict[str, Any]) -> Answers:
        yield await self.sup.reload("requested by reload")

    async def clients(self, args: dict[str, Any]) -> Answers:
        """Each client: how it is identified, its policy, and its load now (HAProxy's table)."""
        desired = self.sup.desired
        try:
            load = await asyncio.to_thread(runtime.table, self.sup.paths.haproxy_stats_socket, "clients")
        except HaproxyRuntimeError:
            load = {}
        peers = {name: [] for name in [c.name for c in desired.clients.clients]}
        for peer in desired.peers:
            owner = desired.clients.owner(peer)
            if owner is not None:
                peers[owner].append({"device": peer.device or peer.host_name, "addresses": list(peer.addresses)})
        rows = []
        entries = [(c.name, c.kind, c.value, c.policy) for c in desired.clients.clients]
        entries.append((UNKNOWN, "unknown", "allow" if desired.clients.unknown_allowed else "deny",
                        desired.clients.defaults))
        for name, kind, value, policy in entries:
            live = load.get(name, {})
            rows.append({
                "name": name, "identity": {"kind": kind, "value": value[:12] + "..." if kind == "token_sha256" else value},
                "peers": peers.get(name, []),
                "policy": {"paths": None if policy.paths is None else list(policy.paths), "models": list(policy.models),
                           "rpm": policy.rpm, "concurrency": policy.concurrency, "priority": policy.priority},
                "in_flight": live.get("use", 0), "last_minute": live.get("http_req_rate", 0),
            })
        yield {"ok": True, "clients": rows}

    async def nodes(self, args: dict[str, Any]) -> Answers:
        """The machines behind this front; `drain` / `undrain` one of them."""
        fleet = self.sup.fleet
        if not fleet.active:
            raise AiServerError("this ai-server fronts no nodes (no [[node]] in ai-server.toml)")
        action, name = args.get("action"), str(args.get("name") or "")
        if action in ("drain", "undrain"):
            await fleet.set_drained(name, action == "drain")
        yield {"ok": True, "nodes": await asyncio.to_thread(fleet.snapshot)}

    async def warm(self, args: dict[str, Any]) -> Answers:
        models = [str(m) for m in args.get("models") or []]
        async for message in self.sup.engine.warm(models, bool(args.get("pull", True))):
            yield message
